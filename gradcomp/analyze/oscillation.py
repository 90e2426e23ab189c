"""Oscillation of each task's own loss trace: swing amplitude, reversals and spectrum.

From one task's loss L_t at the traced steps t (nothing else is used), in a rolling window of
``window`` traced steps, by default detrended: e_t = L_t minus the window's least-squares line
(``detrend="linear"``; a steep trend would otherwise hide a wiggle riding on it: L_t = -c t +
A sin(w t) with c > A w is monotone, so the raw swing reads 0). With increments
d_t = e_t - e_{t-1} of the (detrended) window:

- reversals R: turning points in the window, i.e. consecutive increments of opposite sign
  (d_t d_{t+1} < 0; increments within 1e-12 of the window's scale count as 0);
- oscillation amplitude = half the mean height of the complete legs (the monotone runs between
  the first and the last turning point in the window): sum |d_t| over those legs / (2 (R - 1))
  for R >= 2; with fewer turning points, min(P, N) / 2 where P = sum max(d_t, 0) and
  N = sum max(-d_t, 0) are the window's rises and falls. For A sin(w t) every leg has height
  2A, so the amplitude is A whatever the window's phase. Detrended, a straight line reads 0
  and a curved monotone loss reads about its bend within the window (for exp(-t / tau), about
  window^2 / (16 tau^2) of the loss, small next to a real wiggle); with ``detrend=None`` (the
  raw swing) a monotone trace reads exactly 0 (R = 0 and one of P, N is 0);
- reversal rate = R / (window - 2), the share of interior points that are turning points;
- power spectrum: Welch's method (``scipy.signal.welch``, Hann window, linear detrend, no
  overlap) over non-overlapping blocks of ``window`` traced steps, averaged over blocks, in
  cycles per step; the dominant frequency (largest power above 0) and the share of power above
  ``hf_cutoff`` times the Nyquist frequency (excluding the zero frequency).

Zhao, Wu, Hou (2026, arXiv 2603.04451): a head senses the other head's task through oscillations
of its own local loss.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from scipy import signal

from gradcomp.analyze._checks import finish, need, need_dims, need_length
from gradcomp.dims import FREQUENCY, LOSS, STEP, TASK

__all__ = ["oscillation"]

_BLOCK, _OFFSET = "_block", "_offset"

LABELS: dict[str, tuple[str, str]] = {
    "osc_amplitude": ("loss oscillation amplitude (half the mean leg height, detrended)", "1"),
    "reversals": ("reversals of the loss increment in the window", "1"),
    "reversal_rate": ("share of turning points in the window", "1"),
    "loss_psd": ("power spectral density of the detrended loss (Welch; loss² × steps)", "1"),
    "dominant_frequency": ("dominant frequency of the loss oscillation (cycles per step)", "1"),
    "hf_share": ("share of loss power at high frequency", "1"),
    FREQUENCY: ("frequency (cycles per training step)", "1"),
}


def _line_residuals(w: np.ndarray) -> np.ndarray:
    """``w[..., W]`` minus its least-squares line (NaN windows stay NaN)."""
    t = np.arange(w.shape[-1], dtype=float)
    t -= t.mean()
    centred = w - w.mean(-1, keepdims=True)
    slope = (centred * t).sum(-1, keepdims=True) / (t * t).sum()
    return centred - slope * t


def _swing(w: np.ndarray, detrend: bool) -> tuple[np.ndarray, np.ndarray]:
    """Amplitude and reversal count of windows ``w[..., W]`` (NaN if a window has a NaN)."""
    scale = np.abs(w).max(-1, keepdims=True)
    if detrend:
        w = _line_residuals(w)
    d = np.diff(w, axis=-1)
    d = np.where(np.abs(d) <= 1e-12 * (1.0 + scale), 0.0, d)  # rounding is not a reversal
    # a flat increment keeps the previous direction (a plateau top is one reversal)
    sign = np.sign(d)
    last = np.maximum.accumulate(np.where(sign != 0, np.arange(d.shape[-1]), 0), axis=-1)
    sign = np.take_along_axis(sign, last, -1)
    turn = sign[..., :-1] * sign[..., 1:] < 0  # turning point at w index i + 1
    reversals = turn.sum(-1)
    n_turn = turn.shape[-1]
    first = np.argmax(turn, axis=-1)
    last = n_turn - 1 - np.argmax(turn[..., ::-1], axis=-1)
    absd = np.abs(d)
    cum = np.concatenate([np.zeros((*d.shape[:-1], 1)), np.cumsum(absd, -1)], -1)
    inner = np.take_along_axis(cum, (last + 1)[..., None], -1)[..., 0]
    inner = inner - np.take_along_axis(cum, (first + 1)[..., None], -1)[..., 0]
    rises = np.clip(d, 0.0, None).sum(-1)
    falls = np.clip(-d, 0.0, None).sum(-1)
    legs = np.maximum(reversals - 1, 1)
    amplitude = np.where(reversals >= 2, inner / (2 * legs), np.minimum(rises, falls) / 2)
    bad = np.isnan(w).any(-1)
    return np.where(bad, np.nan, amplitude), np.where(bad, np.nan, reversals.astype(float))


def _step_spacing(loss: xr.DataArray) -> float:
    steps = np.asarray(loss[STEP].values, dtype=float)
    spacing = np.diff(steps)
    if not np.allclose(spacing, spacing[0]):
        raise ValueError(
            "the loss spectrum needs equally spaced steps; this trace was recorded on an "
            "uneven schedule (e.g. logarithmic). Record with a linear schedule "
            "(gradcomp.linear(k) / trace_every=k) or select an evenly spaced part with "
            ".sel(step=...)."
        )
    return float(spacing[0])


def _welch(x: np.ndarray, fs: float) -> np.ndarray:
    """Welch PSD of each block; NaN for a block with a NaN (e.g. a diverged run)."""
    bad = ~np.isfinite(x).all(-1, keepdims=True)
    x = np.where(bad, 0.0, x)
    # a straight (e.g. constant) block has no power, not rounding noise
    flat = np.abs(_line_residuals(x)).max(-1, keepdims=True) <= 1e-12 * (
        1 + np.abs(x).max(-1, keepdims=True)
    )
    psd = signal.welch(x, fs=fs, nperseg=x.shape[-1], detrend="linear")[1]
    return np.where(bad, np.nan, np.where(flat, 0.0, psd))


def _spectrum(loss: xr.DataArray, window: int) -> xr.DataArray:
    fs = 1.0 / _step_spacing(loss)
    blocks = loss.coarsen({STEP: window}, boundary="trim").construct({STEP: (_BLOCK, _OFFSET)})
    blocks = blocks.chunk({_OFFSET: -1}) if loss.chunks is not None else blocks
    freqs = np.fft.rfftfreq(window, d=1.0 / fs)
    psd = xr.apply_ufunc(
        _welch,
        blocks,
        kwargs={"fs": fs},
        input_core_dims=[[_OFFSET]],
        output_core_dims=[[FREQUENCY]],
        dask="parallelized",
        output_dtypes=[float],
        dask_gufunc_kwargs={"output_sizes": {FREQUENCY: freqs.size}},
    )
    return psd.mean(_BLOCK).assign_coords({FREQUENCY: freqs})


def oscillation(
    ds: xr.Dataset,
    window: int = 20,
    hf_cutoff: float = 0.5,
    spectrum: bool = True,
    detrend: str | None = "linear",
) -> xr.Dataset:
    """Oscillation features of each task's loss over training.

    Args:
        ds: a recording or ensemble with ``loss(..., step, task)``; extra leading dims are
            carried through and dask-backed inputs stay lazy (the rolling statistics read one
            window at a time; the spectrum one block at a time).
        window: rolling window and Welch block length, in traced steps (>= 4).
        hf_cutoff: "high frequency" means above ``hf_cutoff`` times the Nyquist frequency.
        spectrum: also compute ``loss_psd``, ``dominant_frequency`` and ``hf_share`` (needs
            equally spaced steps).
        detrend: ``"linear"`` (default): amplitude and reversals of each window's residuals
            from its least-squares line; ``None``: of the raw loss (exactly 0 on any monotone
            curve, and so blind to a wiggle riding on a steep trend).

    Returns:
        Dataset with ``osc_amplitude``, ``reversals``, ``reversal_rate`` (per step, NaN
        before the first full window) and, with ``spectrum``, ``loss_psd(frequency)``,
        ``dominant_frequency`` and ``hf_share``.

    Raises:
        ValueError: without ``loss``, for a trace shorter than ``window``, or an uneven
            schedule when a spectrum is asked for.
    """
    if window < 4:
        raise ValueError(f"window must be at least 4 traced steps, got {window}")
    if detrend not in ("linear", None):
        raise ValueError(f"detrend must be 'linear' or None, got {detrend!r}")
    if not 0.0 < hf_cutoff < 1.0:
        raise ValueError(
            f"hf_cutoff is a fraction of the Nyquist frequency in (0, 1), got {hf_cutoff}"
        )
    need(ds, [LOSS])
    loss = ds[LOSS]
    need_dims(loss, (STEP, TASK), LOSS)
    need_length(loss, STEP, window, f"an oscillation window of {window} steps")

    windows = loss.rolling({STEP: window}).construct(_OFFSET)
    if loss.chunks is not None:
        windows = windows.chunk({_OFFSET: -1})
    amplitude, reversals = xr.apply_ufunc(
        _swing,
        windows,
        kwargs={"detrend": detrend == "linear"},
        input_core_dims=[[_OFFSET]],
        output_core_dims=[[], []],
        dask="parallelized",
        output_dtypes=[float, float],
    )
    out = xr.Dataset(
        {
            "osc_amplitude": amplitude,
            "reversals": reversals,
            "reversal_rate": reversals / (window - 2),
        }
    )
    if spectrum:
        psd = _spectrum(loss, window)
        freqs = psd[FREQUENCY]
        positive = psd.isel({FREQUENCY: np.flatnonzero(freqs.values > 0)})
        total = positive.sum(FREQUENCY)
        out["loss_psd"] = psd
        out["dominant_frequency"] = positive.idxmax(FREQUENCY).where(total > 0)
        nyquist = float(freqs.max())
        high = psd.where(freqs > hf_cutoff * nyquist).sum(FREQUENCY)
        out["hf_share"] = high / total.where(total > 0)
    config = {
        "window": window,
        "hf_cutoff": hf_cutoff,
        "spectrum": int(spectrum),
        "detrend": str(detrend),
    }
    return finish(out, LABELS, "oscillation", config, source=ds)
