"""Correlator: scipy agreement, partial correlation, detrending, calibration, lags, errors."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from _simulate import correlate_intervals, pair
from scipy import stats

from gradcomp.analyze import correlate
from gradcomp.analyze._serial import detrend, effective_n
from gradcomp.analyze.correlate import _permutation_p
from gradcomp.dims import SEED, STEP, WIDTH

WIDTHS = [2, 3, 4, 6]


def capacity_confounded(n_seeds: int = 40, link: float = 0.0, rng: int = 0):
    """x and y both rise with width; within a width they are linked by ``link``."""
    g = np.random.default_rng(rng)
    cap = np.array(WIDTHS, float)[:, None]
    common = g.normal(size=(len(WIDTHS), n_seeds))
    x = cap + g.normal(size=common.shape) + link * common
    y = cap + g.normal(size=common.shape) + link * common
    coords = {WIDTH: WIDTHS, SEED: np.arange(n_seeds)}
    return (
        xr.DataArray(x, dims=(WIDTH, SEED), coords=coords),
        xr.DataArray(y, dims=(WIDTH, SEED), coords=coords),
    )


def test_pearson_and_spearman_match_scipy() -> None:
    x, y = capacity_confounded()
    out = correlate(x, y, (WIDTH, SEED), n_boot=199)
    assert float(out["pearson"]) == pytest.approx(
        stats.pearsonr(x.values.ravel(), y.values.ravel())[0], rel=1e-12
    )
    assert float(out["spearman"]) == pytest.approx(
        stats.spearmanr(x.values.ravel(), y.values.ravel())[0], rel=1e-12
    )
    assert float(out["pearson_p"]) == pytest.approx(
        stats.pearsonr(x.values.ravel(), y.values.ravel())[1], rel=1e-6
    )
    assert out["pearson_lo"] < out["pearson"] < out["pearson_hi"]
    assert out["spearman_lo"] < out["spearman"] < out["spearman_hi"]
    assert int(out["n"]) == 160 and float(out["n_eff"]) == 160


def test_partial_correlation_removes_a_shared_dependence_on_capacity() -> None:
    x, y = capacity_confounded(link=0.0)
    raw = correlate(x, y, (WIDTH, SEED), n_boot=199)
    part = correlate(x, y, (WIDTH, SEED), control=x[WIDTH], n_boot=199)
    assert float(raw["pearson_lo"]) > 0.5  # the confound looks like a strong link
    assert float(part["pearson_lo"]) < 0 < float(part["pearson_hi"])
    # reference: residuals of least squares on width indicators, then Pearson
    onehot = np.kron(np.eye(4), np.ones((40, 1)))
    rx = x.values.ravel() - onehot @ np.linalg.lstsq(onehot, x.values.ravel(), rcond=None)[0]
    ry = y.values.ravel() - onehot @ np.linalg.lstsq(onehot, y.values.ravel(), rcond=None)[0]
    assert float(part["pearson"]) == pytest.approx(stats.pearsonr(rx, ry)[0], rel=1e-10)
    assert float(part["n_eff"]) == 160 - 3
    # Spearman partial: ranks within each width, pooled
    rrx = np.concatenate([stats.rankdata(r) - 20.5 for r in x.values])
    rry = np.concatenate([stats.rankdata(r) - 20.5 for r in y.values])
    assert float(part["spearman"]) == pytest.approx(stats.pearsonr(rrx, rry)[0], rel=1e-10)
    linked = correlate(*capacity_confounded(link=1.5), (WIDTH, SEED), control=x[WIDTH], n_boot=199)
    assert float(linked["pearson_lo"]) > 0.4


def bartlett_n_eff(x: np.ndarray, y: np.ndarray) -> float:
    """Obviously-correct reference: n / (1 + 2 sum_k (1 - k/n) rho_x(k) rho_y(k)), k <= n/5."""
    n = x.size

    def acf(v: np.ndarray, k: int) -> float:
        c = v - v.mean()
        return float(sum(c[t] * c[t + k] for t in range(n - k)) / sum(c * c))

    total = sum((1 - k / n) * acf(x, k) * acf(y, k) for k in range(1, n // 5 + 1))
    return min(n / (1 + 2 * total), n)


def test_serial_dependence_shrinks_the_effective_size() -> None:
    g = np.random.default_rng(1)
    n = 400
    e = g.normal(size=(2, n))
    ar = np.zeros((2, n))
    for t in range(1, n):
        ar[:, t] = 0.8 * ar[:, t - 1] + e[:, t]
    x = xr.DataArray(ar[0], dims=STEP)
    y = xr.DataArray(ar[1], dims=STEP)
    raw = correlate(x, y, STEP, serial=STEP, detrend=None)
    assert raw.attrs["method"] == "series" and raw.attrs["detrend"] == "None"
    assert float(raw["n_eff"]) == pytest.approx(bartlett_n_eff(ar[0], ar[1]), rel=1e-9)
    assert float(raw["n_eff"]) < 0.6 * n
    assert float(raw["pearson"]) == pytest.approx(np.corrcoef(ar[0], ar[1])[0, 1], rel=1e-12)
    z, se = np.arctanh(float(raw["pearson"])), 1 / np.sqrt(float(raw["n_eff"]) - 3)
    assert float(raw["pearson_lo"]) == pytest.approx(np.tanh(z - 1.959963984540054 * se))
    assert float(raw["pearson_p"]) == pytest.approx(2 * stats.norm.sf(abs(z) / se))
    diff = correlate(x, y, STEP, serial=STEP)  # the default: first differences
    dx, dy = np.diff(ar[0]), np.diff(ar[1])
    assert float(diff["pearson"]) == pytest.approx(np.corrcoef(dx, dy)[0, 1], rel=1e-12)
    assert float(diff["spearman"]) == pytest.approx(stats.spearmanr(dx, dy)[0], rel=1e-12)
    assert float(diff["n_eff"]) == pytest.approx(bartlett_n_eff(dx, dy), rel=1e-9)
    assert int(diff["n"]) == n - 1
    assert effective_n(100, 0.0, 0.9) == 100 and effective_n(100, -0.5, 0.5) == 100


def test_linear_detrend_matches_polyfit_residuals() -> None:
    g = np.random.default_rng(3)
    v = g.normal(size=(3, 50)).cumsum(-1)
    v[1, 7] = np.nan
    out = detrend(v, "linear")
    for i in range(3):
        ok = np.isfinite(v[i])
        t = np.arange(50)[ok]
        fit = np.polyval(np.polyfit(t, v[i][ok], 1), t)
        np.testing.assert_allclose(out[i][ok], v[i][ok] - fit, atol=1e-10)
    assert np.isnan(out[1, 7])
    np.testing.assert_array_equal(detrend(v, "difference"), np.diff(v, axis=-1))
    with pytest.raises(ValueError, match="detrend"):
        detrend(v, "quadratic")


def test_two_trends_are_not_a_link_once_differenced() -> None:
    """Independent noisy trends: raw, they correlate 'significantly'; differenced, they do not."""
    g = np.random.default_rng(4)
    t = np.arange(200)
    x = xr.DataArray(np.exp(-t / 60) + 0.05 * g.normal(size=200), dims=STEP)
    y = xr.DataArray(np.exp(-t / 80) + 0.05 * g.normal(size=200), dims=STEP)
    rows = correlate(x, y, STEP)  # as if independent: the trend looks like a strong link
    assert float(rows["pearson"]) > 0.8 and float(rows["pearson_p"]) < 1e-10
    assert float(correlate(x, y, STEP, serial=STEP)["pearson_p"]) > 0.05


def test_seed_design_pooled_estimate_and_permutation_against_loops() -> None:
    g = np.random.default_rng(5)
    x, y = pair(g, 1, 8, 30, 0.5, rho=0.3)
    dx = xr.DataArray(x[0], dims=(SEED, STEP))
    dy = xr.DataArray(y[0], dims=(SEED, STEP))
    out = correlate(dx, dy, (SEED, STEP), serial=STEP, n_boot=199, n_permutations=499)
    assert out.attrs["method"] == "seed" and int(out["n_units"]) == 8
    ddx, ddy = np.diff(x[0], axis=-1), np.diff(y[0], axis=-1)
    ref = np.corrcoef(ddx.ravel(), ddy.ravel())[0, 1]
    assert float(out["pearson"]) == pytest.approx(ref, rel=1e-12)
    assert float(out["pearson_lo"]) < ref < float(out["pearson_hi"])
    # the permutation p-value against a loop over the same permutations
    xc, yc = ddx - ddx.mean(), ddy - ddy.mean()
    perms = np.random.default_rng(9).permuted(np.tile(np.arange(8), (499, 1)), axis=1)
    obs = abs(np.sum(xc * yc))
    null = [abs(sum(np.sum(xc[s] * yc[p[s]]) for s in range(8))) for p in perms]
    ref_p = (1 + sum(v >= obs * (1 - 1e-12) for v in null)) / 500
    assert _permutation_p(xc, yc, 499, np.random.default_rng(9)) == pytest.approx(ref_p)


def null_rates(design: str, reps: int, n_boot: int, phi: float, rho: float = 0.0):
    """Share of replications whose interval excludes 0 / whose p < 0.05 / that cover rho."""
    lo, hi, p = correlate_intervals(design, reps, n_boot, phi, rho)
    excl = ~((lo <= 0) & (0 <= hi))
    return excl.mean(), (p < 0.05).mean(), ((lo <= rho) & (rho <= hi)).mean()


MODELS = [("AR(1) 0.5", 0.5), ("AR(1) 0.9", 0.9), ("random walk", 1.0)]


@pytest.mark.parametrize("design", ["seed", "series"])
@pytest.mark.parametrize(("model", "phi"), MODELS)
def test_false_positive_rate_fast(design: str, model: str, phi: float) -> None:
    excl, rej, _ = null_rates(design, 100, 99, phi)
    assert excl <= 0.12 and rej <= 0.12, (model, excl, rej)


@pytest.mark.slow
@pytest.mark.parametrize("design", ["seed", "series"])
@pytest.mark.parametrize(("model", "phi"), MODELS)
def test_false_positive_rate(design: str, model: str, phi: float) -> None:
    excl, rej, _ = null_rates(design, 400, 399, phi)
    assert 0.03 <= excl <= 0.07 and 0.03 <= rej <= 0.07, (model, excl, rej)


@pytest.mark.slow
@pytest.mark.parametrize("design", ["seed", "series"])
@pytest.mark.parametrize(("phi", "rho"), [(1.0, 0.5), (0.5, 0.4)])
def test_coverage(design: str, phi: float, rho: float) -> None:
    _, rej, cover = null_rates(design, 400, 399, phi, rho)
    assert cover >= 0.93 and rej > 0.9, (cover, rej)


def test_a_million_points_in_linear_time() -> None:
    """Issue 15: 153,600 points ran > 10 min; now everything is per-unit sums (seconds)."""
    g = np.random.default_rng(6)
    shape = (4, 128, 1953)
    coords = {WIDTH: WIDTHS, SEED: np.arange(128), STEP: np.arange(1953)}
    x = xr.DataArray(g.normal(size=shape).cumsum(-1), dims=(WIDTH, SEED, STEP), coords=coords)
    y = xr.DataArray(g.normal(size=shape).cumsum(-1), dims=(WIDTH, SEED, STEP), coords=coords)
    out = correlate(x, y, (WIDTH, SEED, STEP), control=x[WIDTH], serial=STEP)
    assert out.attrs["method"] == "seed" and int(out["n"]) == 4 * 128 * 1952
    assert abs(float(out["pearson"])) < 0.01 and float(out["pearson_p"]) > 1e-3
    flat = correlate(x.isel({SEED: 0}), y.isel({SEED: 0}), (WIDTH, STEP), serial=STEP)
    assert flat.attrs["method"] == "series" and np.isfinite(float(flat["pearson_p"]))


def test_undefined_inputs_say_why() -> None:
    x, y = capacity_confounded()
    const = xr.full_like(x, 1.0)
    out = correlate(const, y, (WIDTH, SEED))
    assert np.isnan(float(out["pearson"])) and np.isnan(float(out["pearson_p"]))
    assert "constant" in out.attrs["undefined_reason"]
    nan = correlate(x.where(x[SEED] < 0), y, SEED)  # every pair NaN
    assert np.all(np.isnan(nan["pearson"])) and "finite pairs" in nan.attrs["undefined_reason"]
    assert "undefined_reason" not in correlate(x, y, (WIDTH, SEED), n_boot=99).attrs
    # one seed over training: no seed design, the series design with a stated method
    walks = np.random.default_rng(0).normal(size=(2, 1, 60)).cumsum(-1)
    one, other = (xr.DataArray(w, dims=(SEED, STEP)) for w in walks)
    single = correlate(one, other, (SEED, STEP), serial=STEP)
    assert single.attrs["method"] == "series"
    with pytest.raises(ValueError, match="detrend"):
        correlate(x, y, SEED, serial=SEED, detrend="cubic")


def test_other_dims_are_kept_and_nan_pairs_dropped() -> None:
    x, y = capacity_confounded()
    x = x.where(~((x[WIDTH] == 2) & (x[SEED] < 5)))
    out = correlate(x, y, SEED, n_boot=99)
    assert out["pearson"].dims == (WIDTH,)
    assert list(out["n"].values) == [35, 40, 40, 40]
    ref = stats.pearsonr(x.sel({WIDTH: 2}).values[5:], y.sel({WIDTH: 2}).values[5:])[0]
    assert float(out["pearson"].sel({WIDTH: 2})) == pytest.approx(ref, rel=1e-12)


def test_clear_errors() -> None:
    x, y = capacity_confounded()
    with pytest.raises(ValueError, match="sample dims"):
        correlate(x, y, STEP)
    with pytest.raises(ValueError, match="serial"):
        correlate(x, y, SEED, serial=WIDTH)
