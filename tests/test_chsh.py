"""gradcomp.chsh.estimate: correctness, validation, properties, interval coverage."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize, stats

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
    # every seed has S = 4: exact worst-case p-value over [-4, 4] with mean <= 2 is (6/8)^n
    assert float(est.p_value) == pytest.approx(0.75**n, rel=1e-12)
    assert bool(est.S_degenerate) and bool(est.S_trivial)
    assert float(est.cbd_p_value) == 1.0  # margin 0: never contextual


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


def _hall(y: np.ndarray, mu: float) -> float:
    """Hall's (1992) skewness-corrected t statistic, written out term by term."""
    n, m, s = len(y), y.mean(), y.std(ddof=1)
    g = np.mean((y - m) ** 3) / s**3
    th = (m - mu) / s
    return np.sqrt(n) * (th + g * th**2 / 3 + g**2 * th**3 / 27 + g / (6 * n))


def _hall_p(y: np.ndarray, null: float) -> float:
    return float(stats.t.sf(_hall(y, null), len(y) - 1))


def _hall_bound(y: np.ndarray, error: float, side: str, rng=(-4.0, 4.0)) -> float:
    """Root of T(mu) = ±t quantile by bracketing (the transformation is monotone)."""
    q = stats.t.ppf(1 - error, len(y) - 1) * (1 if side == "lower" else -1)
    root = optimize.brentq(lambda mu: _hall(y, mu) - q, -50, 50, xtol=1e-14)
    return float(np.clip(root, *rng))


def _reference(a: np.ndarray, b: np.ndarray, confidence: float = 0.95) -> dict:
    """Obviously-correct per-cell loop: Hall's t by root-finding, binomtest, explicit placements."""
    alpha = 1 - confidence
    x = np.array([[a[:, i, j] * b[:, i, j] for j in range(2)] for i in range(2)])  # (2, 2, n)
    C = x.mean(-1)
    s_seed = x[0, 0] + x[0, 1] + x[1, 0] - x[1, 1]
    d = np.array(
        [
            a[:, 0, 0] - a[:, 0, 1],
            a[:, 1, 0] - a[:, 1, 1],
            b[:, 0, 0] - b[:, 1, 0],
            b[:, 0, 1] - b[:, 1, 1],
        ]
    )
    placements = [s for s in itertools.product((1, -1), repeat=4) if np.prod(s) < 0]
    odd = {s: float(np.dot(s, C.ravel())) for s in placements}
    shift_p = [
        stats.binomtest(int((dt > 0).sum()), int((dt != 0).sum()), 0.5).pvalue
        if (dt != 0).any()
        else 1.0
        for dt in d
    ]
    c_ci = [
        stats.binomtest(int((xx > 0).sum()), len(xx)).proportion_ci(confidence, "exact")
        for xx in x.reshape(4, -1)
    ]
    # CbD test: t-tests of the per-seed l_{k,sigma}, pre-test of placements, Bonferroni
    beta = alpha / 20
    lvals = {s: np.dot(s, x.reshape(4, -1)) for s in placements}
    keep = []
    for k in placements:
        p_dom = [_hall_p(lvals[j] - lvals[k], 0) for j in placements if j != k]
        if min(p_dom) >= beta / 7:
            keep.append(k)
    p_k = [
        max(
            _hall_p(lvals[k] - 2 - np.dot(sig, d), 0)
            for sig in itertools.product((1, -1), repeat=4)
        )
        for k in keep
    ]

    def delta_bounds(error: float) -> tuple[float, float]:
        low = high = 0.0
        for dt in d:
            n = len(dt)
            ci10 = stats.binomtest(int((dt > 0).sum()), n).proportion_ci(1 - error / 8, "exact")
            ci01 = stats.binomtest(int((dt < 0).sum()), n).proportion_ci(1 - error / 8, "exact")
            lo, hi = 2 * (ci10.low - ci01.high), 2 * (ci10.high - ci01.low)
            low += lo if lo > 0 else (-hi if hi < 0 else 0.0)
            high += max(abs(lo), abs(hi))
        return low, high

    err_k = (alpha / 2 - beta) / len(keep)
    margin_lo = max(
        min(
            _hall_bound(lvals[k] - 2 - np.dot(sig, d), err_k, "lower", (-14, 10))
            for sig in itertools.product((1, -1), repeat=4)
        )
        for k in keep
    )
    margin_hi = max(_hall_bound(lvals[k], alpha / 4, "upper") for k in placements)
    margin_hi -= 2 + delta_bounds(alpha / 4)[0]
    return {
        "delta_lo": delta_bounds(alpha)[0],
        "delta_hi": delta_bounds(alpha)[1],
        "cbd_margin_lo": margin_lo,
        "cbd_margin_hi": margin_hi,
        "C": C,
        "C_lo": 2 * np.array([c.low for c in c_ci]).reshape(2, 2) - 1,
        "C_hi": 2 * np.array([c.high for c in c_ci]).reshape(2, 2) - 1,
        "S": s_seed.mean(),
        "S_lo": _hall_bound(s_seed, alpha / 2, "lower"),
        "S_hi": _hall_bound(s_seed, alpha / 2, "upper"),
        "p_value": _hall_p(s_seed, 2.0),
        "s_odd": max(odd.values()),
        "shift": d.mean(1),
        "delta": np.abs(d.mean(1)).sum(),
        "shift_p_value": shift_p,
        "signaling_p_value": min(1.0, 4 * min(shift_p)),
        "cbd_margin": max(odd.values()) - 2 - np.abs(d.mean(1)).sum(),
        "cbd_p_value": min(1.0, beta + len(keep) * min(p_k)),
    }


@pytest.mark.parametrize("seed", range(6))
def test_matches_a_per_cell_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = [12, 30, 80][seed % 3]
    # noisy runs with signaling (so that every per-seed combination has positive variance)
    a = rng.choice([-1.0, 1.0], (n, 2, 2, 3), p=[0.3, 0.7])
    b = np.where(rng.random((n, 2, 2, 3)) < 0.8, a, -a)
    b[:, 1, 1] *= np.where(rng.random((n, 3)) < 0.6, -1, 1)
    est = estimate(a, b)
    for e in range(3):
        ref = _reference(a[..., e], b[..., e])
        one = est.isel(dim_0=e)
        for name, val in ref.items():
            np.testing.assert_allclose(one[name].values, val, rtol=1e-9, atol=1e-12, err_msg=name)


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
    est = estimate(a, b, paired=False)
    assert np.isnan(float(est.remote_flip_fraction))
    paired = estimate(a, b)  # quadruples formed by seed index: the same statistics
    for name in ("S", "S_lo", "S_hi", "cbd_p_value", "delta_hi", "signaling_p_value"):
        assert float(est[name]) == float(paired[name])
    assert est.attrs["paired"] == 0 and "seed index" in est.attrs["pairing"]


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
    with pytest.raises(ValueError, match="no cell has two seeds"):
        estimate(nan, nan, n_boot=20)
    two = np.ones((4, 2, 2))
    two[0, 0, 0] = 2.0
    with pytest.raises(ValueError, match="only −1"):
        estimate(two, np.ones((4, 2, 2)))
    with pytest.raises(ValueError, match="confidence"):
        estimate(np.ones((4, 2, 2)), np.ones((4, 2, 2)), confidence=1.5)


def _from_correlators(C, n: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """n identical seeds with a = +1 and b_ij = C_ij (so that C is exactly the given ±1)."""
    b = np.broadcast_to(np.asarray(C, float).reshape(1, 2, 2), (n, 2, 2)).copy()
    return np.ones((n, 2, 2)), b


@pytest.mark.parametrize(
    "minus", [s for s in itertools.product((1, -1), repeat=4) if np.prod(s) < 0]
)
def test_s_odd_hand_cases_for_all_eight_sign_placements(minus) -> None:
    # C equal to a sign placement itself: that placement gives 4, so s_odd = 4
    a, b = _from_correlators(minus)
    est = estimate(a, b)
    assert float(est.s_odd) == 4.0
    # C = (1, 1, 1, 1) * 0.5 from mixed seeds: every one-minus sum is 1, every three-minus -1
    assert bool(est.S_trivial)


def test_s_odd_three_minus_signs_finding_2() -> None:
    a, b = _from_correlators([-1, -1, -1, 1])
    est = estimate(a, b)
    assert float(est.s_odd) == 4.0  # | -2 - 2 * 1 |, the placement (+, +, +, -) negated
    assert float(est.S) == -4.0


def _width_one(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Local deterministic seeds a = (1, -1), b = (1, -1): C = (1, -1, -1, 1), no signaling."""
    a = np.broadcast_to(np.array([[1.0, 1.0], [-1.0, -1.0]]), (n, 2, 2)).copy()
    b = np.broadcast_to(np.array([[1.0, -1.0], [1.0, -1.0]]), (n, 2, 2)).copy()
    return a, b


def test_width_one_margin_is_zero_finding_1() -> None:
    a, b = _width_one(5)
    est = estimate(a, b)
    assert float(est.S) == -2.0
    assert float(est.s_odd) == 2.0
    assert float(est.delta) == 0.0
    assert float(est.cbd_margin) == 0.0  # was S - (2 + delta) = -4
    assert bool(est.S_trivial) and bool(est.S_degenerate)
    assert float(est.cbd_p_value) == 1.0


def test_s_odd_mixed_values() -> None:
    rng = np.random.default_rng(4)
    a, b = _lhv(rng, 30)
    b[:, 1, 1] *= np.where(rng.random(30) < 0.5, -1, 1)  # signaling on B2
    est = estimate(a, b)
    C = est.C.values.ravel()
    expect = max(abs(C.sum() - 2 * C[k]) for k in range(4))
    assert float(est.s_odd) == pytest.approx(expect, abs=1e-12)
    assert float(est.cbd_margin) == pytest.approx(expect - 2 - float(est.delta), abs=1e-12)


def test_p_value_exact_when_every_seed_has_s_two_finding_4() -> None:
    # per-seed products (1, 1, 1, 1) -> S_s = 2 for every seed; float means could give 2 + 4e-16
    rng = np.random.default_rng(0)
    for n in (7, 8, 9, 10):
        a = rng.choice([-1.0, 1.0], (n, 2, 2, 50))
        est = estimate(a, a.copy())
        assert (est.S == 2).all()
        assert (est.p_value == 1).all()
        assert est.S_degenerate.all()
    # 0.1 + 0.2 style round-off: S of 0.1-spaced shares still compares exactly with 2
    a = np.ones((10, 2, 2))
    b = np.ones((10, 2, 2))
    b[:3, 1, 1] = -1  # per-seed S: 4 (3 seeds), 2 (7 seeds): S = 2.6
    b[3:6, 0, 0] = -1  # per-seed S: 0 for these ... S = (12 + 0 + 8) / 10 = 2.0 exactly
    est = estimate(a, b)
    assert float(est.S) == 2.0 and float(est.p_value) == 0.5


def test_degenerate_cells_get_exact_bounds_finding_5() -> None:
    a, b = _width_one(10)
    est = estimate(a, b)
    lo, hi = float(est.S_lo), float(est.S_hi)
    q = 0.025 ** (1 / 10)  # Clopper-Pearson lower bound of the share of agreeing seeds
    assert lo == pytest.approx(-2 - 2 * (1 - q)) and hi == pytest.approx(-2 + 6 * (1 - q))
    assert hi - lo > 1  # not a zero-width interval
    np.testing.assert_allclose(est.C_lo.values.ravel(), [2 * q - 1, -1, -1, 2 * q - 1])
    np.testing.assert_allclose(est.C_hi.values.ravel(), [1, 1 - 2 * q, 1 - 2 * q, 1])
    # delta: no discordant seed, yet the bound is honest about ten seeds
    assert float(est.delta_lo) == 0.0 and float(est.delta_hi) > 0.5


def test_shift_tests_match_binomtest() -> None:
    rng = np.random.default_rng(7)
    a, b = _lhv(rng, 60)
    flip = rng.random(60) < 0.3
    a[flip, 0, 1] = -1  # A1 drifts to -1 when Bob has setting 2
    est = estimate(a, b)
    d = a[:, 0, 0] - a[:, 0, 1]
    ref = stats.binomtest(int((d > 0).sum()), int((d != 0).sum()), 0.5).pvalue
    assert float(est.shift_p_value.sel(marginal="A1: B1−B2")) == pytest.approx(ref, rel=1e-12)
    assert (est.shift_p_value.isel(marginal=slice(1, None)) == 1).all()
    assert float(est.signaling_p_value) == pytest.approx(min(1, 4 * ref), rel=1e-12)
    assert est["shift"].dims == ("marginal",)


def test_nan_outcomes_drop_seeds_per_cell() -> None:
    rng = np.random.default_rng(3)
    a = rng.choice([-1.0, 1.0], (20, 2, 2, 3))
    b = rng.choice([-1.0, 1.0], (20, 2, 2, 3))
    a[:4, 1, 0, 0] = np.nan  # four seeds diverge at cell 0 (one of their runs)
    b[5, 0, 0, 1] = np.nan
    a[:, :, :, 2] = np.nan
    a[:1, :, :, 2] = 1.0  # cell 2: one usable seed only
    est = estimate(a, b)
    assert est.n_seeds.values.tolist() == [16, 19, 1]
    assert est.n_excluded.values.tolist() == [4, 1, 19]
    sub = estimate(a[4:, ..., 0], b[4:, ..., 0])
    for name in ("S", "S_lo", "S_hi", "s_odd", "delta_lo", "cbd_p_value", "p_value"):
        assert float(est[name].isel(dim_0=0)) == pytest.approx(float(sub[name]), rel=1e-12)
    np.testing.assert_allclose(est.C.isel(dim_0=0), sub.C)
    keep = np.arange(20) != 5
    sub1 = estimate(a[keep, ..., 1], b[keep, ..., 1])
    assert float(est.S.isel(dim_0=1)) == pytest.approx(float(sub1.S))
    assert np.isnan(est.S.isel(dim_0=2)) and np.isnan(est.cbd_margin_lo.isel(dim_0=2))
    assert not bool(est.S_degenerate.isel(dim_0=2))
    assert "1 of 3 cell(s)" in est.attrs["note"]


def test_interval_contains_estimate_and_margin_bounds_are_ordered() -> None:
    rng = np.random.default_rng(5)
    a = rng.choice([-1.0, 1.0], (15, 2, 2, 200), p=[0.2, 0.8])
    b = np.where(rng.random(a.shape) < 0.85, a, -a)
    est = estimate(a, b)
    assert (est.S_lo <= est.S + 1e-12).all() and (est.S <= est.S_hi + 1e-12).all()
    assert (est.delta_lo <= est.delta + 1e-12).all() and (est.delta <= est.delta_hi + 1e-12).all()
    assert (est.cbd_margin_lo <= est.cbd_margin + 1e-12).all()
    assert (est.cbd_margin <= est.cbd_margin_hi + 1e-12).all()
    assert (est.C_lo <= est.C).all() and (est.C <= est.C_hi).all()
    assert ((est.cbd_p_value >= 0) & (est.cbd_p_value <= 1)).all()


def test_margin_is_exactly_zero_when_signaling_accounts_for_s_odd() -> None:
    """s_odd = 2 + Δ from fractions that do not sum exactly in floats: margin 0, not 4e-16."""
    rng = np.random.default_rng(5)
    for n in (7, 30, 301):
        # at Alice's setting 1, A follows Bob's setting on a random share f of seeds; B = +1:
        # C12 = 1 − 2f, the other C = 1, so s_odd = 2 + 2f and Δ = 2f
        follows = rng.random(n) < 0.37
        a = np.ones((n, 2, 2))
        a[follows, 0, 1] = -1
        b = np.ones((n, 2, 2))
        est = estimate(a, b)
        s_odd, delta = float(est.s_odd), float(est.delta)
        assert s_odd == pytest.approx(2 + delta, abs=1e-12)
        assert float(est.cbd_margin) == 0.0
