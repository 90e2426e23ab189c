"""Lagged cross-correlation over training: does x lead y?

With replicates (``over``, the seeds), each seed s gives the (first-differenced) series
x_s(t), y_s(t), centred on their own time means. The pooled lagged correlation is

    r(k) = sum_s sum_t x_s(t) y_s(t + k) / sqrt(sum_s sum_t x_s(t)^2  sum_s sum_t y_s(t)^2)

(k > 0: x leads y; the usual cross-correlation estimator, Box & Jenkins 1976, pooled over
seeds), and the lead asymmetry A = mean_{k>0} r(k) - mean_{k>0} r(-k): positive when x leads
y. Both are smooth functions of per-seed sums, so the seed bootstrap (seeds resampled with all
their steps) is valid for any serial dependence within a seed and at A = 0 alike. The interval
is its percentile interval; ``lead_asymmetry_p`` is the two-sided test of A = 0 from the
bootstrap standard error with a t reference of (seeds - 1) degrees of freedom.

(Before, r(k) was the correlation of the ensemble-mean series with a basic bootstrap over
seeds: under "no lead" that statistic sits where the bootstrap is not valid -- the mean series
of independent seeds are mostly noise, and a resample's noise is not the original's -- and
its interval excluded 0 in 22 % of null replications.)

Without replicates (``over=None``) the single series' r(k) gets Fisher's z interval with the
lag-1 effective size (Bretherton et al. 1999); the asymmetry then has no interval.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from scipy import stats

from gradcomp.analyze._checks import finish, need_length, need_seeds
from gradcomp.analyze._resample import resampled_sums
from gradcomp.analyze._serial import effective_n, lag1
from gradcomp.dims import LAG, SEED, STEP, bounded

__all__ = ["lagged"]

LABELS: dict[str, tuple[str, str]] = {
    **bounded("r", "lagged correlation"),
    "n": ("observations", "1"),
    "n_eff": ("effective sample size", "1"),
    **bounded("lead_asymmetry", "lead asymmetry of the lagged correlation", short="lead asymmetry"),
    "lead_asymmetry_p": ("two-sided p-value of a lead asymmetry", "1"),
    LAG: ("lag in traced steps (positive: x leads y)", "1"),
}


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


def _seed_sums(v: np.ndarray, w: np.ndarray, lags: np.ndarray) -> np.ndarray:
    """Per-seed sums (seed, lags + 2): the lagged cross products, then sum x^2 and sum y^2."""
    v = v - v.mean(-1, keepdims=True)
    w = w - w.mean(-1, keepdims=True)
    n = v.shape[-1]
    cols = []
    for k in lags:
        a, b = (v[:, : n - k], w[:, k:]) if k >= 0 else (v[:, -k:], w[:, : n + k])
        cols.append((a * b).sum(-1))
    cols += [(v * v).sum(-1), (w * w).sum(-1)]
    return np.stack(cols, -1)


def _r_asym(sums: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """r(k) and the asymmetry (last) from summed cross products ``sums[..., lags + 2]``."""
    den = np.sqrt(sums[..., -2] * sums[..., -1])[..., None]
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(den > 0, sums[..., :-2] / den, np.nan)
    asym = r[..., pos].mean(-1) - r[..., neg][..., ::-1].mean(-1)
    return np.concatenate([r, asym[..., None]], -1)


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
    source: xr.Dataset | None = None,
) -> xr.Dataset:
    """Lagged cross-correlation r(k) = corr(x_t, y_{t+k}) pooled over seeds (module docstring).

    Args:
        x, y: DataArrays with dims ``(over, dim)`` (and any others, kept), e.g. per-seed
            conflict frequency and per-seed CHSH contribution (whose seed mean is S).
        dim: the time dim; lags count traced steps along it.
        over: the replicate dim, resampled for the intervals; ``None``: single series.
        max_lag: largest |k|.
        difference: correlate first differences (so two trends do not look like a lead).
        n_boot, alpha, random_state: bootstrap resamples, 1 - confidence, generator seed.
        source: the Dataset ``x`` and ``y`` come from: the result keeps its provenance attrs
            (see :func:`gradcomp.provenance.derive`). ``ds.gradcomp.lagged`` passes it.

    Returns:
        Dataset with ``r``, ``r_lo``, ``r_hi``, ``n``, ``n_eff`` over ``lag`` and
        ``lead_asymmetry`` (+ ``_lo``, ``_hi``, ``_p``) = mean_{k>0} r(k) - mean_{k>0} r(-k).
        ``n_eff`` is 3 + 1 / var*(artanh r) (seeds) or the lag-1 effective size (single
        series). Undefined values (a constant trace) are NaN, with
        ``attrs["undefined_reason"]``.

    Raises:
        ValueError: max_lag < 1, a trace too short, fewer than 5 seeds, NaN inside a trace.
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
    shape = xv.shape[: len(other)]
    res = {k: np.full((*shape, lags.size), np.nan) for k in ("r", "r_lo", "r_hi", "n", "n_eff")}
    asym = {k: np.full(shape, np.nan) for k in ("", "_lo", "_hi", "_p")}
    reasons = set()
    for idx in np.ndindex(*shape):
        v, w = _finite_span(xv[idx], yv[idx], dim)
        if over is None:
            v, w = v[None], w[None]
        if difference:
            v, w = np.diff(v, axis=-1), np.diff(w, axis=-1)
        sums = _seed_sums(v, w, lags)
        point = _r_asym(sums.sum(0), pos, neg)
        length = v.shape[-1]
        res["n"][idx] = v.shape[0] * (length - np.abs(lags))
        if not np.all(np.isfinite(point)):
            reasons.add("x or y is constant (after differencing) in every replicate")
            continue
        if over is not None:
            boot = _r_asym(resampled_sums(sums, n_boot, rng), pos, neg)
            lo = np.nanquantile(boot, alpha / 2, axis=0)
            hi = np.nanquantile(boot, 1 - alpha / 2, axis=0)
            zvar = np.nanvar(np.arctanh(np.clip(boot[:, :-1], -0.999999, 0.999999)), 0, ddof=1)
            res["n_eff"][idx] = np.minimum(res["n"][idx], 3 + 1 / zvar)
            se = float(np.nanstd(boot[:, -1], ddof=1))
            tstat = point[-1] / se if se > 0 else np.nan
            asym["_p"][idx] = float(2 * stats.t.sf(abs(tstat), v.shape[0] - 1))
        else:
            n = length - np.abs(lags)
            neff = np.array([effective_n(int(k), lag1([v[0]]), lag1([w[0]])) for k in n])
            res["n_eff"][idx] = neff
            z = np.arctanh(np.clip(point[:-1], -0.999999, 0.999999))
            half = stats.norm.ppf(1 - alpha / 2) / np.sqrt(np.maximum(neff - 3, 1e-9))
            lo = np.append(np.tanh(z - half), np.nan)
            hi = np.append(np.tanh(z + half), np.nan)
        res["r"][idx], res["r_lo"][idx], res["r_hi"][idx] = point[:-1], lo[:-1], hi[:-1]
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
        "method": "seed bootstrap of pooled lagged correlations" if over else "Fisher z",
        "undefined_reason": "; ".join(sorted(reasons)),
    }
    return finish(out, LABELS, "lagged", config, source=source)
