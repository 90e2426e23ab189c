"""The correlator: relate mechanism traces to S across training and across capacity.

:func:`correlate` gives Pearson r and Spearman rho over the sample dims, each with an interval,
a two-sided p-value and an effective sample size. With ``control`` (e.g. width) it is a partial
correlation: x and y (or their ranks) are centred within each level of the control, which
removes any dependence on capacity, linear or not, before correlating (a shared dependence on
capacity is then not reported as a link); the formula is the pooled within-level correlation
r = sum_l c_xy,l / sqrt(sum_l c_xx,l sum_l c_yy,l) of the level-centred cross products.

Three designs, chosen from the arguments (``attrs["method"]`` says which):

- ``"rows"`` (no ``serial``): the pairs are independent. Percentile bootstrap of the pairs
  (beyond 20,000 pairs, of 20,000 contiguous groups of pairs: still independent units);
  ``pearson_p`` / ``spearman_p`` are the t-tests with n - (levels - 1) - 2 degrees of freedom.
- ``"seed"`` (``serial`` given and the seed among the sample dims, with >= 5 seeds): a seed's
  whole trace is the independent unit. The interval is Fisher's z +- t_{B-1} se, with se the
  standard deviation of artanh r over a bootstrap of the B seeds (each seed's rows together:
  Field & Welsh 2007, cluster bootstrap; inflated by sqrt(B / (B - 1))); n_eff = 3 + 1 / se^2.
  The p-values are permutation tests that pair x of seed s with y of seed pi(s): exact for
  any serial dependence within a seed, trends included.
- ``"series"`` (``serial`` without seeds, e.g. seed-mean traces over width x step): Fisher's
  z interval and test with Bartlett's effective size for two autocorrelated series
  (Bartlett 1935; Dutilleul 1993; the "modified Chelton" form of Pyper & Peterman 1998):
  n_eff = n / (1 + 2 sum_{k=1}^{T/5} (1 - k/T) rho_x(k) rho_y(k)) - (levels - 1), with the
  autocorrelations pooled over the series (of length T) of the detrended, level-centred
  values; r +- z_{1-alpha/2} / sqrt(n_eff - 3) on the z scale, and the p-value of the same z.

Over training (``serial``) the series are detrended first, ``detrend="difference"`` by default
(first differences within each series; ``"linear"`` removes each series' least-squares line,
``None`` nothing): two trends, or two random walks, correlate strongly by accident (Yule 1926;
Granger & Newbold 1974), their differences do not. The coefficient is then that of the
increments.

Spearman's rho ranks the (detrended) values once, within levels; its bootstrap resamples the
ranked pairs. Everything is computed from per-unit sums, so time and memory are linear in the
input (see ``_resample``).

PAPER.md: S and generalization both move with capacity, so correlate within capacity or
partial it out (Zhao, Wu, Hou 2026, arXiv 2603.04451 report S correlating with
generalization near the critical capacity).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr
from scipy import stats

from gradcomp.analyze import _serial
from gradcomp.analyze._checks import finish
from gradcomp.analyze._resample import MAX_UNITS, resampled_sums, unit_sums
from gradcomp.analyze._serial import DETRENDS, autocorrelation
from gradcomp.dims import SEED, bounded

__all__ = ["correlate"]

#: fewest seeds for the seed design; with fewer a serial correlation uses blocks
MIN_SEEDS = 5

LABELS: dict[str, tuple[str, str]] = {
    **bounded("pearson", "Pearson correlation"),
    "pearson_p": ("two-sided p-value of the Pearson correlation", "1"),
    **bounded("spearman", "Spearman rank correlation"),
    "spearman_p": ("two-sided p-value of the Spearman correlation", "1"),
    "n": ("observations", "1"),
    "n_eff": ("effective sample size", "1"),
    "n_units": ("independent units resampled (seeds or pairs)", "1"),
}
_KEYS = tuple(LABELS)


def _centred(v: np.ndarray, ok: np.ndarray, lev: np.ndarray, n_levels: int) -> np.ndarray:
    """v minus its level mean over the finite pairs; 0 outside them."""
    vv = np.where(ok, v, 0.0)
    means = np.bincount(lev[ok], weights=vv[ok], minlength=n_levels) / np.maximum(
        np.bincount(lev[ok], minlength=n_levels), 1
    )
    return np.where(ok, vv - means[lev], 0.0)


def _ranks(v: np.ndarray, ok: np.ndarray, lev: np.ndarray, n_levels: int) -> np.ndarray:
    out = np.zeros_like(v)
    for g in range(n_levels):
        m = ok & (lev == g)
        out[m] = stats.rankdata(v[m])
    return out


def _r(tot: np.ndarray) -> np.ndarray:
    """Pooled within-level correlation from sums ``tot[..., level, kind, 6]``: (..., kind).

    The six sums are (count, x, y, xx, yy, xy).
    """
    n, sx, sy, sxx, syy, sxy = np.moveaxis(tot, -1, 0)
    inv = np.divide(1.0, n, out=np.zeros_like(n), where=n > 0)
    cxx = (sxx - sx * sx * inv).sum(-2)
    cyy = (syy - sy * sy * inv).sum(-2)
    cxy = (sxy - sx * sy * inv).sum(-2)
    den = np.sqrt(np.clip(cxx, 0, None) * np.clip(cyy, 0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, np.clip(cxy / den, -1.0, 1.0), np.nan)


def _t_p(r: np.ndarray, df: float) -> np.ndarray:
    if df <= 0:
        return np.full_like(r, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = r * np.sqrt(df / np.clip(1 - r * r, 0.0, None))
    return 2 * stats.t.sf(np.abs(t), df)


def _permutation_p(xc: np.ndarray, yc: np.ndarray, n_perm: int, rng) -> float:
    """Two-sided permutation p of sum_s <x_s, y_s> against sum_s <x_s, y_pi(s)> (units s)."""
    cross = xc @ yc.T  # (units, units)
    units = cross.shape[0]
    obs = abs(np.trace(cross))
    perms = rng.permuted(np.tile(np.arange(units), (n_perm, 1)), axis=1)
    null = np.abs(cross[np.arange(units), perms].sum(1))
    return float((1 + np.sum(null >= obs * (1 - 1e-12))) / (1 + n_perm))


def _series(
    xc: np.ndarray,
    yc: np.ndarray,
    xr_: np.ndarray,
    yr_: np.ndarray,
    ok: np.ndarray,
    n: int,
    n_levels: int,
    alpha: float,
) -> dict[str, float]:
    """The series design: Fisher z with Bartlett's effective size (module docstring)."""
    length = xc.shape[-1]
    lags = max(1, length // 5)
    k = np.arange(1, lags + 1)
    out: dict[str, float] = {"n": n, "n_units": np.nan}
    n_effs = []
    for name, (a, b) in (("pearson", (xc, yc)), ("spearman", (xr_, yr_))):
        ra = autocorrelation(np.where(ok, a, np.nan).reshape(-1, length), lags)
        rb = autocorrelation(np.where(ok, b, np.nan).reshape(-1, length), lags)
        factor = 1.0 + 2.0 * np.sum((1 - k / length) * ra[1:] * rb[1:])
        n_eff = min(n / max(factor, 1e-9), n) - (n_levels - 1)
        r = float(np.sum(a * b) / np.sqrt(np.sum(a * a) * np.sum(b * b)))
        z = np.arctanh(np.clip(r, -0.999999, 0.999999))
        se = 1.0 / np.sqrt(n_eff - 3) if n_eff > 3 else np.nan
        half = stats.norm.ppf(1 - alpha / 2) * se
        out[name] = r
        out[f"{name}_lo"], out[f"{name}_hi"] = float(np.tanh(z - half)), float(np.tanh(z + half))
        out[f"{name}_p"] = float(2 * stats.norm.sf(abs(z) / se))
        n_effs.append(n_eff)
    out["n_eff"] = float(n_effs[0])
    return out


def _undefined(n: int, reason: str) -> tuple[dict[str, float], str]:
    return dict.fromkeys(_KEYS, np.nan) | {"n": n}, reason


def _one(
    xa: np.ndarray,
    ya: np.ndarray,
    lv: np.ndarray,
    design: str,
    n_boot: int,
    n_perm: int,
    alpha: float,
    rng: np.random.Generator,
) -> tuple[dict[str, float], str]:
    """All statistics of one cell; ``xa``, ``ya``, ``lv`` are (units, series, T)."""
    ok = np.isfinite(xa) & np.isfinite(ya)
    n = int(ok.sum())
    levels, lev = np.unique(np.where(ok, lv, -1), return_inverse=True)
    lev = lev.reshape(lv.shape) - int(levels[0] == -1)
    lev = np.where(ok, lev, 0)
    n_levels = int(levels.size - (levels[0] == -1))
    if n < n_levels + 3:
        return _undefined(n, f"fewer than levels + 3 = {n_levels + 3} finite pairs")
    xc, yc = _centred(xa, ok, lev, n_levels), _centred(ya, ok, lev, n_levels)
    xr_, yr_ = (_centred(_ranks(v, ok, lev, n_levels), ok, lev, n_levels) for v in (xa, ya))
    if not (np.any(xc != 0) and np.any(yc != 0)):
        return _undefined(n, "x or y is constant within every level (after detrending)")
    units = xa.shape[0]
    if design == "seed":
        unit = np.broadcast_to(np.arange(units)[:, None, None], xa.shape)
        n_units = units
    elif design == "series":
        return _series(xc, yc, xr_, yr_, ok, n, n_levels, alpha), ""
    else:
        flat = np.cumsum(ok.ravel()) - 1
        step = max(1, -(-n // MAX_UNITS))
        unit = (flat // step).reshape(xa.shape)
        n_units = -(-n // step)
    cols = np.stack([ok.astype(float), xc, yc, xc * xc, yc * yc, xc * yc])
    rcols = np.stack([ok.astype(float), xr_, yr_, xr_ * xr_, yr_ * yr_, xr_ * yr_])
    columns = np.stack([cols, rcols])[..., ok]  # (kind, 6, n)
    index = (unit[ok] * n_levels + lev[ok]).astype(np.intp)
    sums = unit_sums(index, n_units * n_levels, columns)
    sums = sums.reshape(n_units, n_levels, 2, 6)
    point = _r(sums.sum(0))  # (kind,)
    boot = _r(resampled_sums(sums, n_boot, rng))  # (n_boot, kind)
    out: dict[str, float] = {"n": n, "n_units": n_units}
    n_eff_rows = n - (n_levels - 1)
    if design == "rows":
        with np.errstate(invalid="ignore"):
            lo = np.nanquantile(boot, alpha / 2, axis=0)
            hi = np.nanquantile(boot, 1 - alpha / 2, axis=0)
        n_eff = float(n_eff_rows)
        p = _t_p(point, n_eff - 2)
    else:
        # Fisher z with the seed-bootstrap standard error (inflated by B / (B - 1)) and a t
        # reference with B - 1 degrees of freedom for B seeds
        zb = np.arctanh(np.clip(boot, -0.999999, 0.999999))
        with np.errstate(invalid="ignore"):
            z_sd = np.nanstd(zb, axis=0, ddof=1) * np.sqrt(n_units / (n_units - 1))
        zp = np.arctanh(np.clip(point, -0.999999, 0.999999))
        q = stats.t.ppf(1 - alpha / 2, n_units - 1)
        lo, hi = np.tanh(zp - q * z_sd), np.tanh(zp + q * z_sd)
        n_eff = float(min(n_eff_rows, 3 + 1 / z_sd[0] ** 2)) if z_sd[0] > 0 else np.nan
    if design == "seed":
        p = np.array(
            [
                _permutation_p(v[0].reshape(units, -1), v[1].reshape(units, -1), n_perm, rng)
                for v in ((xc, yc), (xr_, yr_))
            ]
        )
    for k, name in enumerate(("pearson", "spearman")):
        out[name] = float(point[k])
        out[f"{name}_lo"], out[f"{name}_hi"] = float(lo[k]), float(hi[k])
        out[f"{name}_p"] = float(p[k])
    out["n_eff"] = n_eff
    return out, ""


def correlate(
    x: xr.DataArray,
    y: xr.DataArray,
    dims: str | Sequence[str],
    *,
    control: xr.DataArray | None = None,
    serial: str | None = None,
    detrend: str | None = "difference",
    n_boot: int = 999,
    n_permutations: int = 999,
    alpha: float = 0.05,
    random_state: int = 0,
    source: xr.Dataset | None = None,
) -> xr.Dataset:
    """Pearson and Spearman correlation of ``x`` and ``y`` over the sample dims ``dims``.

    Args:
        x, y: DataArrays sharing the sample dims (broadcast against each other); any other
            dims are kept, one coefficient per entry. NaN pairs are dropped.
        dims: the sample dims, e.g. ``("width", "seed")`` or ``("seed", "step")``.
        control: a DataArray over (some of) ``dims`` whose levels are partialled out, e.g.
            ``ds["width"]``: x and y are centred within each level (partial correlation).
        serial: one of ``dims`` along which observations are serially dependent (e.g.
            ``"step"``). With a ``seed`` sample dim of >= 5 seeds the seed is resampled and
            permuted; otherwise Bartlett's effective size is used (module docstring).
        detrend: along ``serial`` only: ``"difference"`` (default: first differences of each
            series), ``"linear"`` (residuals of each series' least-squares line) or ``None``.
            Ignored without ``serial``.
        n_boot: bootstrap resamples; n_permutations: seed permutations (seed design);
            alpha: 1 - confidence level; random_state: seeds the resampling.
        source: the Dataset ``x`` and ``y`` come from: the result keeps its provenance attrs
            (``history``, ``strategy``, ``config`` as ``source_config``, ...; see
            :func:`gradcomp.provenance.derive`). ``ds.gradcomp.correlate`` passes it.

    Returns:
        Dataset with ``pearson``, ``spearman`` (each + ``_lo``, ``_hi``, ``_p``), ``n`` (finite
        pairs after detrending), ``n_eff`` and ``n_units`` over the remaining dims. Where a
        coefficient is undefined (too few pairs, a constant trace) every statistic is NaN and
        ``attrs["undefined_reason"]`` says why. ``attrs["method"]`` names the design,
        ``attrs["detrend"]`` the detrending.

    Raises:
        ValueError: missing sample dims, ``serial`` not among them, an unknown ``detrend``.
    """
    dims = [dims] if isinstance(dims, str) else list(dims)
    x, y = xr.broadcast(x, y)
    missing = [d for d in dims if d not in x.dims]
    if missing:
        raise ValueError(f"x and y lack the sample dims {missing}; they have {list(x.dims)}")
    if serial is not None and serial not in dims:
        raise ValueError(f"serial={serial!r} must be one of the sample dims {dims}")
    if detrend not in DETRENDS:
        raise ValueError(f"detrend must be one of {DETRENDS}, got {detrend!r}")
    if serial is None:
        design, how = "rows", None
    elif SEED in dims and serial != SEED and x.sizes[SEED] >= MIN_SEEDS:
        design, how = "seed", detrend
    else:
        design, how = "series", detrend
    lead = [SEED] if design == "seed" else []
    rest = [d for d in dims if d not in (serial, *lead)]
    order = [*lead, *rest, *([serial] if serial else [])]
    other = [d for d in x.dims if d not in dims]
    shape3 = (
        x.sizes[SEED] if lead else 1,
        int(np.prod([x.sizes[d] for d in rest], dtype=int)) if serial else 1,
        x.sizes[serial] if serial else int(np.prod([x.sizes[d] for d in rest], dtype=int)),
    )
    cells = int(np.prod([x.sizes[d] for d in other], dtype=int))
    xv = np.asarray(x.transpose(*other, *order).values, float).reshape(cells, *shape3)
    yv = np.asarray(y.transpose(*other, *order).values, float).reshape(cells, *shape3)
    if control is not None:
        cv = control.broadcast_like(x.isel({d: 0 for d in other}, drop=True))
        codes = np.unique(cv.transpose(*order).values, return_inverse=True)[1]
        lv = codes.reshape(shape3)
    else:
        lv = np.zeros(shape3, int)
    if serial is not None:
        xv, yv = _serial.detrend(xv, how), _serial.detrend(yv, how)
        lv = lv[..., lv.shape[-1] - xv.shape[-1] :]
    rng = np.random.default_rng(random_state)
    rows, reasons = [], set()
    for i in range(cells):
        row, reason = _one(xv[i], yv[i], lv, design, n_boot, n_permutations, alpha, rng)
        rows.append(row)
        if reason:
            reasons.add(reason)
    shape = [x.sizes[d] for d in other]
    coords = {d: x[d].values for d in other if d in x.coords}
    out = xr.Dataset(
        {k: (other, np.array([r[k] for r in rows], float).reshape(shape)) for k in _KEYS},
        coords=coords,
    )
    config = {
        "dims": ",".join(dims),
        "serial": serial or "",
        "detrend": str(how) if serial else "",
        "method": design,
        "n_boot": n_boot,
        "n_permutations": n_permutations if design == "seed" else 0,
        "alpha": alpha,
        "control": "" if control is None else str(control.name),
        "undefined_reason": "; ".join(sorted(reasons)),
    }
    return finish(out, LABELS, "correlate", config, source=source)
