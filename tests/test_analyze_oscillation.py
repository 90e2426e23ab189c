"""Loss oscillation: zero on monotone curves, planted frequency and amplitude, a loop reference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import signal

from gradcomp.analyze import oscillation
from gradcomp.dims import SEED, STEP, TASK


def losses(values: np.ndarray, every: int = 1) -> xr.Dataset:
    """A recording with ``loss(step, task)`` from ``values[step, task]``."""
    return xr.Dataset(
        {"loss": ((STEP, TASK), values)},
        coords={
            STEP: np.arange(len(values)) * every,
            TASK: [f"t{i}" for i in range(values.shape[1])],
        },
    )


def amplitude_loop(x: np.ndarray, window: int, detrend: bool = False) -> np.ndarray:
    """Obviously-correct reference: half the mean height of complete legs per trailing window
    (of the residuals from ``np.polyfit``'s line with ``detrend``)."""
    out = np.full(x.size, np.nan)
    for t in range(window - 1, x.size):
        w = x[t - window + 1 : t + 1]
        if detrend:
            s = np.arange(window)
            w = w - np.polyval(np.polyfit(s, w, 1), s)
        turns = [i for i in range(1, window - 1) if (w[i] - w[i - 1]) * (w[i + 1] - w[i]) < 0]
        if len(turns) >= 2:
            heights = [abs(w[b] - w[a]) for a, b in itertools.pairwise(turns)]
            out[t] = np.mean(heights) / 2
        else:
            d = np.diff(w)
            out[t] = min(d[d > 0].sum(), -d[d < 0].sum()) / 2
    return out


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.float64, st.integers(8, 60), elements=st.floats(0, 10, allow_subnormal=False)),
    st.booleans(),
    st.integers(4, 8),
)
def test_zero_on_monotone_curves(increments: np.ndarray, down: bool, window: int) -> None:
    curve = np.cumsum(-increments if down else increments) + 3.0
    out = oscillation(losses(curve[:, None]), window=window, spectrum=False, detrend=None)
    amp = out["osc_amplitude"].values[window - 1 :]
    np.testing.assert_array_equal(amp, 0.0)
    np.testing.assert_array_equal(out["reversals"].values[window - 1 :], 0.0)


@pytest.mark.parametrize(("amplitude", "period"), [(0.3, 16), (0.05, 8), (1.0, 32)])
def test_recovers_planted_frequency_and_amplitude(amplitude: float, period: int) -> None:
    t = np.arange(512)
    every = 2  # traced every 2 optimiser steps: frequencies are in cycles per step
    loss = np.exp(-t / 400) + amplitude * np.sin(2 * np.pi * t / period)
    flat = np.exp(-t / 400)
    out = oscillation(losses(np.stack([loss, flat], -1), every=every), window=64)
    amp = out["osc_amplitude"].sel({TASK: "t0"}).values[63:]
    np.testing.assert_allclose(amp, amplitude, rtol=0.05)  # the window's line takes a little
    # detrended, the curved trend reads its bend within the window (64^2 / (16 400^2))
    np.testing.assert_allclose(out["osc_amplitude"].sel({TASK: "t1"}).values[63:], 0.0, atol=2e-3)
    raw = oscillation(losses(flat[:, None]), window=64, detrend=None, spectrum=False)
    np.testing.assert_array_equal(raw["osc_amplitude"].values[63:], 0.0)
    assert float(out["dominant_frequency"].sel({TASK: "t0"})) == pytest.approx(1 / (period * every))
    hf = float(out["hf_share"].sel({TASK: "t0"}))
    # the default cutoff is half the Nyquist frequency: a period of under 4 samples
    assert hf < 0.05
    fast = oscillation(losses(np.stack([np.sin(2 * np.pi * t / 3), flat], -1)), window=64)
    assert float(fast["hf_share"].sel({TASK: "t0"})) > 0.95


@pytest.mark.parametrize("detrend", ["linear", None])
def test_amplitude_matches_a_loop_on_noise(detrend: str | None) -> None:
    x = np.random.default_rng(0).normal(size=(80, 2)).cumsum(0)
    out = oscillation(losses(x), window=9, spectrum=False, detrend=detrend)
    for i in range(2):
        ref = amplitude_loop(x[:, i], 9, detrend=detrend is not None)
        np.testing.assert_allclose(out["osc_amplitude"].values[:, i], ref, rtol=1e-9)


def test_a_wiggle_on_a_steep_trend_is_seen_once_detrended() -> None:
    """Issue 10, finding 12: L = -c t + A sin(w t) with c > A w is monotone, so the raw swing
    reads 0; the detrended amplitude reads A, and a straight line still reads 0."""
    t = np.arange(400)
    amplitude, period = 0.01, 10
    slope = 2 * amplitude * 2 * np.pi / period  # twice the wiggle's steepest slope
    loss = 5.0 - slope * t + amplitude * np.sin(2 * np.pi * t / period)
    assert np.all(np.diff(loss) < 0)
    line = 5.0 - slope * t
    ds = losses(np.stack([loss, line], -1))
    old = oscillation(ds, window=40, detrend=None, spectrum=False)
    np.testing.assert_array_equal(old["osc_amplitude"].values[39:], 0.0)
    new = oscillation(ds, window=40)
    np.testing.assert_allclose(new["osc_amplitude"].values[39:, 0], amplitude, rtol=0.05)
    assert np.all(new["reversals"].values[39:, 0] >= 6)
    np.testing.assert_allclose(new["osc_amplitude"].values[39:, 1], 0.0, atol=1e-12)
    np.testing.assert_array_equal(new["reversals"].values[39:, 1], 0.0)
    assert float(new["dominant_frequency"].sel({TASK: "t0"})) == pytest.approx(1 / period)
    assert float(new["hf_share"].sel({TASK: "t0"})) < 0.05  # a period of 10 steps is slow


def test_constant_and_missing_traces_give_no_number() -> None:
    x = np.ones((60, 2))
    x[:, 1] = np.nan
    out = oscillation(losses(x), window=20)
    np.testing.assert_array_equal(out["osc_amplitude"].values[19:, 0], 0.0)  # truly flat
    assert np.isnan(float(out["hf_share"].sel({TASK: "t0"})))  # no power: no share
    assert np.isnan(float(out["dominant_frequency"].sel({TASK: "t0"})))
    assert np.all(np.isnan(out["osc_amplitude"].values[:, 1]))
    assert np.isnan(float(out["hf_share"].sel({TASK: "t1"})))
    with pytest.raises(ValueError, match="detrend"):
        oscillation(losses(x), window=20, detrend="quadratic")


def test_spectrum_is_welch_of_blocks() -> None:
    x = np.random.default_rng(1).normal(size=(96, 1))
    out = oscillation(losses(x), window=32)
    blocks = x[:96, 0].reshape(3, 32)
    ref = np.mean([signal.welch(b, fs=1.0, nperseg=32, detrend="linear")[1] for b in blocks], 0)
    np.testing.assert_allclose(out["loss_psd"].values[0], ref, rtol=1e-12)


def test_lazy_on_dask_with_extra_dims() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 120, 2)).cumsum(1)
    ds = xr.Dataset(
        {"loss": ((SEED, STEP, TASK), x)},
        coords={SEED: [0, 1, 2], STEP: np.arange(120), TASK: ["A", "B"]},
    )
    lazy = oscillation(ds.chunk({SEED: 1, STEP: 40}), window=20)
    assert lazy["osc_amplitude"].chunks is not None and lazy["loss_psd"].chunks is not None
    eager = oscillation(ds, window=20)
    xr.testing.assert_allclose(lazy.compute(), eager)
    xr.testing.assert_allclose(
        eager.isel({SEED: 1}, drop=True), oscillation(ds.isel({SEED: 1}, drop=True), window=20)
    )


def test_clear_errors() -> None:
    with pytest.raises(ValueError, match="'loss'"):
        oscillation(xr.Dataset({"gram": (STEP, [1.0])}))
    with pytest.raises(ValueError, match="too short"):
        oscillation(losses(np.ones((10, 1))), window=20)
    uneven = losses(np.ones((30, 1))).assign_coords({STEP: np.arange(30) ** 2})
    with pytest.raises(ValueError, match="equally spaced"):
        oscillation(uneven, window=10)
    assert "osc_amplitude" in oscillation(uneven, window=10, spectrum=False)
