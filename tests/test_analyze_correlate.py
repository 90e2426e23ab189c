"""Correlator: scipy agreement, partial correlation against least squares, lags, sample sizes."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from scipy import stats

from gradcomp._dims import SEED, STEP, WIDTH
from gradcomp.analyze import correlate, lagged
from gradcomp.analyze._serial import effective_n, lag1

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


def test_serial_dependence_shrinks_the_effective_size() -> None:
    g = np.random.default_rng(1)
    n = 400
    e = g.normal(size=(2, n))
    ar = np.zeros((2, n))
    for t in range(1, n):
        ar[:, t] = 0.8 * ar[:, t - 1] + e[:, t]
    x = xr.DataArray(ar[0], dims=STEP)
    y = xr.DataArray(ar[1], dims=STEP)
    out = correlate(x, y, STEP, serial=STEP, n_boot=199)
    rx, ry = lag1([ar[0]]), lag1([ar[1]])
    assert float(out["n_eff"]) == pytest.approx(effective_n(n, rx, ry))
    assert float(out["n_eff"]) < 0.6 * n
    assert effective_n(100, 0.0, 0.9) == 100 and effective_n(100, -0.5, 0.5) == 100


def test_other_dims_are_kept_and_nan_pairs_dropped() -> None:
    x, y = capacity_confounded()
    x = x.where(~((x[WIDTH] == 2) & (x[SEED] < 5)))
    out = correlate(x, y, SEED, n_boot=99)
    assert out["pearson"].dims == (WIDTH,)
    assert list(out["n"].values) == [35, 40, 40, 40]
    ref = stats.pearsonr(x.sel({WIDTH: 2}).values[5:], y.sel({WIDTH: 2}).values[5:])[0]
    assert float(out["pearson"].sel({WIDTH: 2})) == pytest.approx(ref, rel=1e-12)


def test_lagged_finds_a_planted_lead_and_matches_corrcoef() -> None:
    g = np.random.default_rng(2)
    n_seeds, n_steps, lead = 12, 80, 3
    driver = g.normal(size=n_steps + lead).cumsum()
    x = driver[None, lead:] + 0.5 * g.normal(size=(n_seeds, n_steps))
    y = driver[None, :n_steps] + 0.5 * g.normal(size=(n_seeds, n_steps))
    dx = xr.DataArray(x, dims=(SEED, STEP))
    dy = xr.DataArray(y, dims=(SEED, STEP))
    out = lagged(dx, dy, max_lag=5, difference=True, n_boot=199)
    assert int(out["r"].idxmax("lag")) == lead
    assert float(out["lead_asymmetry_lo"]) > 0
    sx, sy = np.diff(x.mean(0)), np.diff(y.mean(0))
    ref = np.corrcoef(sx[:-lead], sy[lead:])[0, 1]
    assert float(out["r"].sel(lag=lead)) == pytest.approx(ref, rel=1e-12)
    # y leading x shows as a negative asymmetry
    back = lagged(dy, dx, max_lag=5, n_boot=199)
    assert float(back["lead_asymmetry_hi"]) < 0
    single = lagged(dx.mean(SEED), dy.mean(SEED), over=None, max_lag=5)
    np.testing.assert_allclose(single["r"], out["r"], rtol=1e-12)
    assert np.all(single["r_lo"] < single["r"])


def test_clear_errors() -> None:
    x, y = capacity_confounded()
    with pytest.raises(ValueError, match="sample dims"):
        correlate(x, y, STEP)
    with pytest.raises(ValueError, match="serial"):
        correlate(x, y, SEED, serial=WIDTH)
    one = xr.DataArray(np.random.default_rng(0).normal(size=(1, 30)), dims=(SEED, STEP))
    with pytest.raises(ValueError, match="at least 5 seeds, got 1"):
        lagged(one, one, max_lag=2)
    with pytest.raises(ValueError, match="too short"):
        lagged(x.rename({WIDTH: STEP}), y.rename({WIDTH: STEP}), max_lag=3)
