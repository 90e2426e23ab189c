"""CHSH plots: correlator bounds against scipy's exact binomial interval, flags, axes returned."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import xarray as xr
from scipy import stats

from gradcomp import chsh
from gradcomp.plot import chsh as pc


def _estimate(n: int = 40, seed: int = 0) -> xr.Dataset:
    g = np.random.default_rng(seed)
    a = np.where(g.random((n, 2, 2, 3)) < [0.5, 0.9, 1.0], 1, -1)
    a[:, :, :, 2] = 1  # width 3: every seed solves every task -> every |C| = 1
    b = np.where(g.random((n, 2, 2, 3)) < [0.5, 0.9, 1.0], 1, -1)
    b[:, :, :, 2] = 1
    da = lambda x: xr.DataArray(  # noqa: E731
        x, dims=("seed", "alice", "bob", "width"), coords={"width": [1, 2, 3]}
    )
    return chsh.estimate(da(a), da(b), n_boot=200)


def test_correlator_bounds_equal_scipy_clopper_pearson() -> None:
    est = _estimate()
    lo, hi = pc.correlator_bounds(est.drop_vars(["C_lo", "C_hi"], errors="ignore"))
    n = int(est["n_seeds"].max())
    c = est["C"].transpose("alice", "bob", "width").values
    for idx in np.ndindex(c.shape):
        k = round((c[idx] + 1) / 2 * n)
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
        np.testing.assert_allclose(
            [lo[idx], hi[idx]], [2 * ci.low - 1, 2 * ci.high - 1], rtol=1e-10, atol=1e-12
        )
    # an all-agreeing cell gets a non-degenerate exact bound, not a zero-width interval
    assert hi[0, 0, 2] == 1 and lo[0, 0, 2] < 1


def test_correlator_bounds_prefer_the_estimates_own() -> None:
    est = _estimate()
    est["C_lo"], est["C_hi"] = est["C"] - 0.5, est["C"] + 0.5
    lo, _ = pc.correlator_bounds(est)
    np.testing.assert_array_equal(lo, est["C_lo"].values)


def test_flags_derived_when_the_estimate_has_none() -> None:
    est = _estimate().drop_vars(["S_trivial", "S_degenerate"], errors="ignore")
    degenerate, trivial = pc._flags(est)
    assert trivial.tolist() == [False, False, True]
    assert not degenerate[2]  # trivial points are marked as trivial, not also as degenerate
    est["S_trivial"] = ("width", [True, False, False])
    assert pc._flags(est)[1].tolist() == [True, False, False]


def test_plot_functions_return_their_axes_and_figure_has_three_panels() -> None:
    est = _estimate()
    fig, axes = plt.subplots(1, 3)
    assert pc.capacity(est, axes[0]) is axes[0]
    assert pc.margin(est, axes[1]) is axes[1]
    assert pc.correlators(est, axes[2]) is axes[2]
    labels = axes[2].get_legend_handles_labels()[1]
    assert "C22 (enters S with a minus sign)" in labels and "C22 (−)" not in labels
    plt.close(fig)
    assert len(pc.figure(est, title="t").axes) >= 3
    with pytest.raises(ValueError, match="cbd_margin"):
        pc.margin(est.drop_vars("cbd_margin"), axes[1])
