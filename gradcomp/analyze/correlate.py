"""The correlator: relate mechanism traces to S across training and across capacity.

Every coefficient carries a bootstrap interval (``scipy.stats.bootstrap``, percentile) and its
effective sample size:

- :func:`correlate` -- Pearson r and Spearman rho over the sample dims; with ``control`` (e.g.
  width) a partial correlation: x and y (or their ranks) are centred within each level of the
  control, which removes any dependence on capacity, linear or not, before correlating (the
  project's reading of "controlling for capacity"; a shared dependence on capacity is then not
  reported as a link). With ``serial`` (e.g. step) observations are serially dependent: the
  effective size is n (1 - r_x r_y) / (1 + r_x r_y) from the lag-1 autocorrelations (Bretherton
  et al. 1999) and the bootstrap resamples blocks of consecutive steps. With a control, the
  effective size loses one per level.
- :func:`lagged` -- r(k) = corr(x_t, y_{t+k}) of ensemble-mean series for lags -K..K (k > 0:
  x leads y), optionally of first differences so that two trends do not look like a lead; the
  interval resamples the seeds (x and y of a seed together), so it reflects run-to-run
  variation. It is the basic (reverse-percentile) bootstrap of Fisher's z = artanh r, not the
  percentile one: a resample repeats seeds, so its mean series are noisier and their
  correlations attenuated (BCa breaks down when every resample is attenuated). The basic
  interval reflects that bias back, so it targets the many-seed value and may lie above an
  attenuated estimate. ``lead_asymmetry`` = mean_{k>0} r(k) - mean_{k>0} r(-k), with its interval:
  positive with an interval above 0 means x leads y.

PAPER.md: S and generalization both move with capacity, so correlate within capacity or
partial it out (Zhao, Wu, Hou 2026, arXiv 2603.04451 report S correlating with
generalization near the critical capacity).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import xarray as xr
from scipy import stats

from gradcomp._dims import LAG, SEED, STEP
from gradcomp.analyze._checks import finish, need_length, need_seeds
from gradcomp.analyze._serial import blocks, effective_n, lag1

__all__ = ["correlate", "lagged"]

_SAMPLE = "_sample"

LABELS: dict[str, tuple[str, str]] = {
    "pearson": ("Pearson correlation", "1"),
    "pearson_lo": ("Pearson correlation, lower bound", "1"),
    "pearson_hi": ("Pearson correlation, upper bound", "1"),
    "pearson_p": ("two-sided p-value of the Pearson correlation (effective n)", "1"),
    "spearman": ("Spearman rank correlation", "1"),
    "spearman_lo": ("Spearman rank correlation, lower bound", "1"),
    "spearman_hi": ("Spearman rank correlation, upper bound", "1"),
    "n": ("observations", "1"),
    "n_eff": ("effective sample size", "1"),
    "r": ("lagged correlation", "1"),
    "r_lo": ("lagged correlation, lower bound", "1"),
    "r_hi": ("lagged correlation, upper bound", "1"),
    "lead_asymmetry": ("lead asymmetry of the lagged correlation", "1"),
    "lead_asymmetry_lo": ("lead asymmetry, lower bound", "1"),
    "lead_asymmetry_hi": ("lead asymmetry, upper bound", "1"),
    LAG: ("lag (positive: x leads y)", "traced steps"),
}


def _centre(v: np.ndarray, levels: np.ndarray | None) -> np.ndarray:
    if levels is None:
        return v - v.mean()
    sums = np.bincount(levels, weights=v)
    counts = np.bincount(levels)
    return v - (sums / np.maximum(counts, 1))[levels]


def _pearson(x: np.ndarray, y: np.ndarray, levels: np.ndarray | None) -> float:
    xc, yc = _centre(x, levels), _centre(y, levels)
    den = np.sqrt(np.sum(xc * xc) * np.sum(yc * yc))
    return float(np.sum(xc * yc) / den) if den > 0 else np.nan


def _spearman(x: np.ndarray, y: np.ndarray, levels: np.ndarray | None) -> float:
    if levels is None:
        return _pearson(stats.rankdata(x), stats.rankdata(y), None)
    rx, ry = np.empty_like(x), np.empty_like(y)
    for g in np.unique(levels):
        m = levels == g
        rx[m], ry[m] = stats.rankdata(x[m]), stats.rankdata(y[m])
    return _pearson(rx, ry, levels)


def _bootstrap(*args, **kwargs):
    """``scipy.stats.bootstrap``; an interval whose resamples are degenerate (e.g. a constant
    resample, r undefined) is NaN, which the output shows: no warning on top of it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        return stats.bootstrap(*args, **kwargs)


def _one(x, y, levels, groups, n_boot, alpha, rng) -> dict[str, float]:
    """All statistics for one pair of 1-D samples (NaN pairs already removed)."""
    n = x.size
    n_levels = 1 if levels is None else np.unique(levels).size
    if n < n_levels + 3:
        return dict.fromkeys(
            (
                "pearson",
                "pearson_lo",
                "pearson_hi",
                "pearson_p",
                "spearman",
                "spearman_lo",
                "spearman_hi",
                "n_eff",
            ),
            np.nan,
        ) | {"n": n}
    if groups is None:
        neff, length = float(n), 1
    else:
        split = [np.flatnonzero(groups == g) for g in np.unique(groups)]
        rx = lag1([_centre(x, levels)[i] for i in split])
        ry = lag1([_centre(y, levels)[i] for i in split])
        neff = effective_n(n, rx, ry)
        length = max(1, int(np.ceil(n / neff)))
    neff -= n_levels - 1
    r, rho = _pearson(x, y, levels), _spearman(x, y, levels)
    index = blocks(np.zeros(n, int) if groups is None else groups, length)

    def stat(picked: np.ndarray, which: str) -> float:
        rows = np.concatenate([index[i] for i in picked.astype(int)])
        lv = None if levels is None else levels[rows]
        return (_pearson if which == "p" else _spearman)(x[rows], y[rows], lv)

    out = {"pearson": r, "spearman": rho, "n": n, "n_eff": neff}
    ids = np.arange(len(index))
    for key, which in (("pearson", "p"), ("spearman", "s")):
        if not np.isfinite(out[key]):
            out[f"{key}_lo"] = out[f"{key}_hi"] = np.nan
            continue
        res = _bootstrap(
            (ids,),
            lambda i, w=which: stat(i, w),
            vectorized=False,
            n_resamples=n_boot,
            method="percentile",
            confidence_level=1 - alpha,
            random_state=rng,
        )
        out[f"{key}_lo"], out[f"{key}_hi"] = res.confidence_interval
    df = neff - 2
    if df > 0 and abs(r) < 1:
        t = r * np.sqrt(df / (1 - r * r))
        out["pearson_p"] = float(2 * stats.t.sf(abs(t), df))
    else:
        out["pearson_p"] = np.nan if df <= 0 else 0.0
    return out


def correlate(
    x: xr.DataArray,
    y: xr.DataArray,
    dims: str | Sequence[str],
    *,
    control: xr.DataArray | None = None,
    serial: str | None = None,
    n_boot: int = 999,
    alpha: float = 0.05,
    random_state: int = 0,
) -> xr.Dataset:
    """Pearson and Spearman correlation of ``x`` and ``y`` over the sample dims ``dims``.

    Args:
        x, y: DataArrays sharing the sample dims (broadcast against each other); any other
            dims are kept, one coefficient per entry. NaN pairs are dropped.
        dims: the sample dims, e.g. ``("width", "seed")`` or ``("width", "step")``.
        control: a DataArray over (some of) ``dims`` whose levels are partialled out, e.g.
            ``ds["width"]``: x and y are centred within each level (partial correlation).
        serial: one of ``dims`` along which observations are serially dependent (e.g.
            ``"step"``): shrinks the effective size and bootstraps blocks of consecutive steps.
        n_boot: bootstrap resamples; alpha: 1 - confidence level.
        random_state: seeds the bootstrap.

    Returns:
        Dataset with ``pearson`` (+ ``_lo``, ``_hi``, ``_p``), ``spearman`` (+ ``_lo``,
        ``_hi``), ``n`` and ``n_eff`` over the remaining dims. ``pearson_p`` is the t-test
        with ``n_eff - 2`` degrees of freedom.
    """
    dims = [dims] if isinstance(dims, str) else list(dims)
    x, y = xr.broadcast(x, y)
    missing = [d for d in dims if d not in x.dims]
    if missing:
        raise ValueError(f"x and y lack the sample dims {missing}; they have {list(x.dims)}")
    if serial is not None and serial not in dims:
        raise ValueError(f"serial={serial!r} must be one of the sample dims {dims}")
    order = [d for d in dims if d != serial] + ([serial] if serial else [])
    other = [d for d in x.dims if d not in dims]
    xs = x.stack({_SAMPLE: order}).transpose(*other, _SAMPLE)
    ys = y.stack({_SAMPLE: order}).transpose(*other, _SAMPLE)
    xv, yv = np.asarray(xs.values, float), np.asarray(ys.values, float)
    levels = groups = None
    if control is not None:
        cv = control.broadcast_like(x.isel({d: 0 for d in other}, drop=True))
        levels = np.unique(cv.stack({_SAMPLE: order}).values, return_inverse=True)[1].ravel()
    if serial is not None:
        shape = [x.sizes[d] for d in order[:-1]]
        groups = np.repeat(np.arange(int(np.prod(shape, dtype=int))), x.sizes[serial])
    rng = np.random.default_rng(random_state)
    flat_x = xv.reshape(-1, xv.shape[-1])
    flat_y = yv.reshape(-1, yv.shape[-1])
    rows = []
    for i in range(flat_x.shape[0]):
        ok = np.isfinite(flat_x[i]) & np.isfinite(flat_y[i])
        rows.append(
            _one(
                flat_x[i][ok],
                flat_y[i][ok],
                None if levels is None else np.unique(levels[ok], return_inverse=True)[1],
                None if groups is None else groups[ok],
                n_boot,
                alpha,
                rng,
            )
        )
    shape = [x.sizes[d] for d in other]
    coords = {d: x[d].values for d in other if d in x.coords}
    out = xr.Dataset(
        {k: (other, np.array([r[k] for r in rows], float).reshape(shape)) for k in rows[0]},
        coords=coords,
    )
    config = {
        "dims": ",".join(dims),
        "serial": serial or "",
        "n_boot": n_boot,
        "alpha": alpha,
        "control": "" if control is None else str(control.name),
    }
    return finish(out, LABELS, "correlate", config)


def _lag_r(xm: np.ndarray, ym: np.ndarray, lags: np.ndarray) -> np.ndarray:
    n = xm.size
    out = np.empty(lags.size)
    for j, k in enumerate(lags):
        a, b = (xm[: n - k], ym[k:]) if k >= 0 else (xm[-k:], ym[: n + k])
        out[j] = _pearson(a, b, None)
    return out


def _finite_span(v: np.ndarray, w: np.ndarray, dim: str) -> tuple[np.ndarray, np.ndarray]:
    """Drop leading/trailing steps where any replicate is NaN (e.g. a rolling window's start)."""
    ok = np.isfinite(v).reshape(-1, v.shape[-1]).all(0) & np.isfinite(w).reshape(
        -1, w.shape[-1]
    ).all(0)
    idx = np.flatnonzero(ok)
    if idx.size == 0 or idx.size != idx[-1] - idx[0] + 1:
        raise ValueError(
            f"lagged needs one contiguous stretch of finite values along {dim!r}; NaNs inside "
            "the trace would misalign the lags: select a finite stretch with .isel(...)"
        )
    return v[..., idx[0] : idx[-1] + 1], w[..., idx[0] : idx[-1] + 1]


def lagged(
    x: xr.DataArray,
    y: xr.DataArray,
    dim: str = STEP,
    over: str | None = SEED,
    max_lag: int = 5,
    difference: bool = True,
    n_boot: int = 999,
    alpha: float = 0.05,
    random_state: int = 0,
) -> xr.Dataset:
    """Lagged cross-correlation r(k) = corr(x_t, y_{t+k}) of ensemble-mean series.

    Args:
        x, y: DataArrays with dims ``(over, dim)`` (and any others, kept), e.g. per-seed
            conflict frequency and per-seed CHSH contribution (whose seed mean is S). With
            ``over=None`` they are single series and the interval is Fisher's z with the
            effective size of each lag.
        dim: the time dim; lags count traced steps along it.
        over: the replicate dim averaged before correlating and resampled for the interval.
        max_lag: largest |k|.
        difference: correlate first differences (so two trends do not look like a lead).
        n_boot, alpha, random_state: bootstrap resamples, 1 - confidence, generator seed.

    Returns:
        Dataset with ``r``, ``r_lo``, ``r_hi``, ``n``, ``n_eff`` over ``lag`` and
        ``lead_asymmetry`` (+ ``_lo``, ``_hi``) = mean_{k>0} r(k) - mean_{k>0} r(-k).
    """
    if max_lag < 1:
        raise ValueError(f"max_lag must be at least 1, got {max_lag}")
    x, y = xr.broadcast(x, y)
    need_length(x, dim, max_lag + 4 + int(difference), f"lags up to {max_lag}")
    if over is not None:
        need_seeds(x.rename({over: SEED}) if over != SEED else x, 5, "a lagged correlation")
    other = [d for d in x.dims if d not in (dim, over)]
    core = [over, dim] if over is not None else [dim]
    xv = np.asarray(x.transpose(*other, *core).values, float)
    yv = np.asarray(y.transpose(*other, *core).values, float)
    lags = np.arange(-max_lag, max_lag + 1)
    pos, neg = lags > 0, lags < 0
    rng = np.random.default_rng(random_state)

    def series(v: np.ndarray) -> np.ndarray:
        m = v.mean(0) if over is not None else v
        return np.diff(m) if difference else m

    def stat(v: np.ndarray, w: np.ndarray) -> np.ndarray:
        r = _lag_r(series(v), series(w), lags)
        return np.append(r, r[pos].mean() - r[neg][::-1].mean())

    shape = xv.shape[: len(other)]
    res = {k: np.full((*shape, lags.size), np.nan) for k in ("r", "r_lo", "r_hi", "n", "n_eff")}
    asym = {k: np.full(shape, np.nan) for k in ("", "_lo", "_hi")}
    for idx in np.ndindex(*shape):
        v, w = _finite_span(xv[idx], yv[idx], dim)
        point = stat(v, w)
        xm, ym = series(v), series(w)
        n = xm.size - np.abs(lags)
        neff = np.array([effective_n(int(k), lag1([xm]), lag1([ym])) for k in n])
        if over is not None:
            seeds = np.arange(v.shape[0])

            def zstat(i: np.ndarray, v=v, w=w) -> np.ndarray:
                out = stat(v[i.astype(int)], w[i.astype(int)])
                return np.append(np.arctanh(np.clip(out[:-1], -0.999999, 0.999999)), out[-1])

            ci = _bootstrap(
                (seeds,),
                zstat,
                vectorized=False,
                n_resamples=n_boot,
                method="basic",
                confidence_level=1 - alpha,
                random_state=rng,
            ).confidence_interval
            lo, hi = np.asarray(ci.low), np.asarray(ci.high)
            lo[:-1], hi[:-1] = np.tanh(lo[:-1]), np.tanh(hi[:-1])
        else:
            z = np.arctanh(np.clip(point[:-1], -0.999999, 0.999999))
            half = stats.norm.ppf(1 - alpha / 2) / np.sqrt(np.maximum(neff - 3, 1e-9))
            lo = np.append(np.tanh(z - half), np.nan)
            hi = np.append(np.tanh(z + half), np.nan)
        res["r"][idx], res["r_lo"][idx], res["r_hi"][idx] = point[:-1], lo[:-1], hi[:-1]
        res["n"][idx], res["n_eff"][idx] = n, neff
        asym[""][idx], asym["_lo"][idx], asym["_hi"][idx] = point[-1], lo[-1], hi[-1]
    coords = {**{d: x[d].values for d in other if d in x.coords}, LAG: lags}
    out = xr.Dataset({k: ((*other, LAG), v) for k, v in res.items()}, coords=coords)
    for k, v in asym.items():
        out[f"lead_asymmetry{k}"] = (other, v)
    config = {
        "dim": dim,
        "over": over or "",
        "max_lag": max_lag,
        "difference": int(difference),
        "n_boot": n_boot,
        "alpha": alpha,
    }
    return finish(out, LABELS, "lagged", config)
