"""Serial dependence: detrending, pooled autocorrelation, effective sample sizes."""

from __future__ import annotations

import numpy as np

__all__ = ["DETRENDS", "autocorrelation", "detrend", "effective_n", "lag1"]

#: the detrending choices along a serial dim
DETRENDS = ("difference", "linear", None)


def lag1(series: list[np.ndarray]) -> float:
    """Pooled lag-1 autocorrelation of several series (each 1-D, finite), 0 if undefined."""
    num = den = 0.0
    for s in series:
        if s.size < 3:
            continue
        c = s - s.mean()
        num += float(np.sum(c[:-1] * c[1:]))
        den += float(np.sum(c * c))
    return num / den if den > 0 else 0.0


def effective_n(n: int, rx: float, ry: float) -> float:
    """n_eff = n (1 - rx ry) / (1 + rx ry) for AR(1)-like series (Bretherton et al. 1999, eq. 31).

    Only positive products shrink the sample; a negative product is not allowed to inflate it
    (capped at n).
    """
    prod = float(np.clip(rx * ry, 0.0, 0.999))
    return n * (1.0 - prod) / (1.0 + prod)


def detrend(v: np.ndarray, how: str | None) -> np.ndarray:
    """Detrend each series along the last axis (NaN-aware).

    ``"difference"``: first differences v_t - v_{t-1} (one entry shorter; a NaN spoils the two
    differences it enters); ``"linear"``: residuals of each series' least-squares line through
    its finite points; ``None``: unchanged.
    """
    if how is None:
        return v
    if how == "difference":
        return np.diff(v, axis=-1)
    if how != "linear":
        raise ValueError(f"detrend must be one of {DETRENDS}, got {how!r}")
    ok = np.isfinite(v)
    t = np.broadcast_to(np.arange(v.shape[-1], dtype=float), v.shape)
    w = ok.astype(float)
    n = w.sum(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        tm = (w * t).sum(-1, keepdims=True) / n
        vm = np.where(ok, v, 0.0).sum(-1, keepdims=True) / n
        tc = np.where(ok, t - tm, 0.0)
        slope = (tc * np.where(ok, v - vm, 0.0)).sum(-1, keepdims=True) / (tc * tc).sum(
            -1, keepdims=True
        )
    slope = np.where(np.isfinite(slope), slope, 0.0)
    return v - vm - slope * (t - tm)


def autocorrelation(z: np.ndarray, max_lag: int) -> np.ndarray:
    """Pooled autocorrelation rho(0..max_lag) of the series ``z[..., T]`` (NaN counts as 0).

    Each series is centred on its own finite mean; lagged products are summed over series
    (FFT, O(n log T)) and divided by the pooled sum of squares (the usual biased estimator).
    """
    z = np.asarray(z, float).reshape(-1, z.shape[-1])
    ok = np.isfinite(z)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(ok, z, 0.0).sum(-1, keepdims=True) / ok.sum(-1, keepdims=True)
    c = np.where(ok, z - np.nan_to_num(mean), 0.0)
    size = 1 << int(np.ceil(np.log2(2 * z.shape[-1])))
    f = np.fft.rfft(c, size, axis=-1)
    acov = np.fft.irfft(f * np.conj(f), size, axis=-1)[:, : max_lag + 1].sum(0)
    return acov / acov[0] if acov[0] > 0 else np.zeros(max_lag + 1)
