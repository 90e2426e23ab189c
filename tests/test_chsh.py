"""gradcomp.chsh.estimate: correctness, validation, properties, interval coverage."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from gradcomp.chsh import bootstrap_means, estimate


def _lhv(rng: np.random.Generator, n: int, p: np.ndarray | None = None) -> tuple:
    """Local hidden variables: each seed draws a1, a2, b1, b2 once (no signaling)."""
    lam = np.where(rng.random((n, 4)) < (0.5 if p is None else p), 1, -1)
    a = np.empty((n, 2, 2))
    b = np.empty((n, 2, 2))
    a[:, 0, :], a[:, 1, :] = lam[:, [0]], lam[:, [1]]
    b[:, :, 0], b[:, :, 1] = lam[:, [2]], lam[:, [3]]
    return a, b


def test_hand_computed_values() -> None:
    # 2 seeds; per pair products: seed0 = (+1, +1, +1, -1), seed1 = (+1, -1, +1, +1)
    a = np.ones((2, 2, 2))
    b = np.array([[[1, 1], [1, -1]], [[1, -1], [1, 1]]], dtype=float)
    est = estimate(a, b, n_boot=50)
    np.testing.assert_allclose(est.C.values, [[1, 0], [1, 0]])
    assert float(est.S) == pytest.approx(2.0)
    # s_odd: sign placements give 2 - 2*C_ij for the negated one: max is 2 - 2*0 = 2
    assert float(est.s_odd) == pytest.approx(2.0)
    # Bob's marginal: <B1>_{A1} = 1, <B1>_{A2} = 1, <B2>_{A1} = 0, <B2>_{A2} = 0 -> delta 0
    assert float(est.delta) == pytest.approx(0.0)
    assert float(est.cbd_margin) == pytest.approx(0.0)
    # per-seed S: 4 and 0 -> se = std([4, 0], ddof=1)/sqrt(2) = 2
    assert float(est.S_se) == pytest.approx(2.0)
    assert int(est.n_seeds) == 2


def test_signaling_model_reaches_four() -> None:
    n = 50
    a = np.ones((n, 2, 2))
    b = np.ones((n, 2, 2))
    b[:, 1, 1] = -1  # Bob's outcome depends on Alice's setting
    est = estimate(a, b, n_boot=100)
    assert float(est.S) == 4.0
    assert float(est.delta) == 2.0
    assert float(est.cbd_margin) == 0.0
    assert float(est.remote_flip_fraction) == 1.0
    assert float(est.bob_flip_fraction) == 1.0 and float(est.alice_flip_fraction) == 0.0
    assert float(est.p_value) == 0.0


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 60),
    seed=st.integers(0, 2**31),
    p=st.lists(st.floats(0, 1), min_size=4, max_size=4),
)
def test_local_hidden_variables_never_exceed_two(n: int, seed: int, p: list[float]) -> None:
    a, b = _lhv(np.random.default_rng(seed), n, np.array(p))
    est = estimate(a, b, n_boot=20)
    assert -2 - 1e-12 <= float(est.S) <= 2 + 1e-12
    assert float(est.s_odd) <= 2 + 1e-12
    assert float(est.delta) == 0.0
    assert float(est.remote_flip_fraction) == 0.0
    assert float(est.S_lo) <= float(est.S) + 1e-12 <= float(est.S_hi) + 2e-12


def test_fair_coins_interval_covers_zero_at_the_stated_rate() -> None:
    rng = np.random.default_rng(3)
    reps, n = 400, 100
    a = xr.DataArray(rng.choice([-1, 1], (n, 2, 2, reps)), dims=("seed", "alice", "bob", "rep"))
    b = xr.DataArray(rng.choice([-1, 1], (n, 2, 2, reps)), dims=("seed", "alice", "bob", "rep"))
    est = estimate(a, b, confidence=0.9, n_boot=500, seed=1)
    assert est.S.dims == ("rep",)
    covered = float(((est.S_lo <= 0) & (est.S_hi >= 0)).mean())
    assert 0.84 <= covered <= 0.96, covered
    assert abs(float(est.S.mean())) < 0.05
    # analytic standard error: 2 / sqrt(n) for four independent fair products
    assert float(est.S_se.mean()) == pytest.approx(2 / np.sqrt(n), rel=0.05)


def test_bootstrap_interval_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    n = 80
    a = rng.choice([-1, 1], (n, 2, 2), p=[0.3, 0.7])
    b = rng.choice([-1, 1], (n, 2, 2), p=[0.4, 0.6])
    est = estimate(a, b, n_boot=20000, confidence=0.9, seed=5)
    signs = np.array([[1, 1], [1, -1]])
    s_seed = (a * b * signs).sum((1, 2))
    ref = stats.bootstrap(
        (s_seed,),
        np.mean,
        confidence_level=0.9,
        n_resamples=20000,
        method="percentile",
        random_state=7,
    ).confidence_interval
    assert float(est.S_lo) == pytest.approx(ref.low, abs=0.04)
    assert float(est.S_hi) == pytest.approx(ref.high, abs=0.04)

    def delta(*d, axis):  # d: the four per-seed marginal differences
        return sum(np.abs(np.mean(x, axis=axis)) for x in d)

    diffs = (
        a[:, 0, 0] - a[:, 0, 1],
        a[:, 1, 0] - a[:, 1, 1],
        b[:, 0, 0] - b[:, 1, 0],
        b[:, 0, 1] - b[:, 1, 1],
    )
    ref = stats.bootstrap(
        diffs,
        delta,
        paired=True,
        confidence_level=0.9,
        n_resamples=20000,
        method="percentile",
        random_state=7,
    ).confidence_interval
    assert float(est.delta_lo) == pytest.approx(ref.low, abs=0.04)
    assert float(est.delta_hi) == pytest.approx(ref.high, abs=0.04)


def test_bootstrap_means_groups_resample_independently() -> None:
    rng = np.random.default_rng(0)
    x = np.stack([np.arange(10.0), np.arange(10.0)], axis=1)  # identical groups
    same = bootstrap_means(x, 200, rng)
    assert np.array_equal(same[:, 0], same[:, 1])
    indep = bootstrap_means(x, 200, rng, groups=2)
    assert not np.array_equal(indep[:, 0], indep[:, 1])
    assert indep.mean() == pytest.approx(4.5, abs=0.2)


def test_extra_dims_and_coords_are_carried_through() -> None:
    rng = np.random.default_rng(1)
    dims = ("width", "seed", "bob", "alice", "step")
    a = xr.DataArray(
        rng.choice([-1, 1], (3, 20, 2, 2, 4)),
        dims=dims,
        coords={"width": [1, 2, 4], "step": [0, 5, 10, 20], "alice": [1, 2], "bob": [1, 2]},
    )
    b = a.copy(data=rng.choice([-1, 1], a.shape))
    est = estimate(a, b, n_boot=50)
    assert est.S.dims == ("width", "step")
    assert est.C.dims == ("alice", "bob", "width", "step")
    assert est.width.values.tolist() == [1, 2, 4]
    one = estimate(a.sel(width=2, step=10), b.sel(width=2, step=10), n_boot=50)
    xr.testing.assert_allclose(est.C.sel(width=2, step=10, drop=True), one.C)
    assert float(est.S.sel(width=2, step=10)) == pytest.approx(float(one.S))
    assert est.S.attrs["long_name"]


def test_unpaired_mode() -> None:
    a, b = _lhv(np.random.default_rng(2), 40)
    est = estimate(a, b, n_boot=50, paired=False)
    assert np.isnan(float(est.remote_flip_fraction))
    ab = a * b
    assert float(est.S_se) == pytest.approx(np.sqrt(ab.var(0, ddof=1).sum() / 40))


def test_netcdf_round_trip(tmp_path) -> None:
    a, b = _lhv(np.random.default_rng(2), 10)
    est = estimate(a, b, n_boot=20)
    est.to_netcdf(tmp_path / "e.nc", engine="h5netcdf")
    xr.testing.assert_identical(xr.load_dataset(tmp_path / "e.nc", engine="h5netcdf"), est)


@pytest.mark.parametrize(
    ("a", "b", "match"),
    [
        (np.zeros((5, 2, 2)), np.ones((5, 2, 2)), "only −1 and \\+1"),
        (np.ones((1, 2, 2)), np.ones((1, 2, 2)), "at least two seeds"),
        (np.ones((5, 2, 2)), np.ones((6, 2, 2)), "same dims and shape"),
        (np.ones((5, 2)), np.ones((5, 2)), "dims \\(seed, alice, bob"),
        (np.ones((5, 3, 2)), np.ones((5, 3, 2)), "two settings"),
    ],
)
def test_bad_input_is_a_clear_error(a, b, match) -> None:
    with pytest.raises(ValueError, match=match):
        estimate(a, b, n_boot=20)


def test_missing_setting_pair_is_a_clear_error() -> None:
    a = xr.DataArray(
        np.ones((4, 2, 2)), dims=("seed", "alice", "bob"), coords={"alice": [1, 3], "bob": [1, 2]}
    )
    with pytest.raises(ValueError, match="setting pair missing"):
        estimate(a, a, n_boot=20)
    nan = np.ones((4, 2, 2))
    nan[:, 1, 1] = np.nan
    with pytest.raises(ValueError, match="only −1"):
        estimate(nan, nan, n_boot=20)
    with pytest.raises(ValueError, match="confidence"):
        estimate(np.ones((4, 2, 2)), np.ones((4, 2, 2)), confidence=1.5)
