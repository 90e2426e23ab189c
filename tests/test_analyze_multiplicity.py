"""q-values: scipy agreement per family, NaN handling, coords kept, dask, errors."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from scipy import stats

from gradcomp.analyze import qvalues
from gradcomp.dims import STEP, TASK


def bh_loop(p: list[float]) -> list[float]:
    """Obviously-correct reference: q_(i) = min_{j >= i} m p_(j) / j, capped at 1."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    q = [0.0] * m
    running = 1.0
    for rank in range(m, 0, -1):
        i = order[rank - 1]
        running = min(running, p[i] * m / rank)
        q[i] = running
    return q


def test_matches_a_loop_and_scipy_per_family() -> None:
    g = np.random.default_rng(0)
    p = xr.DataArray(
        g.uniform(size=(2, 7)) ** 2,
        dims=(TASK, STEP),
        coords={TASK: ["A", "B"], STEP: np.arange(7) * 10},
        attrs={"long_name": "permutation p-value"},
    )
    q = qvalues(p, dims=STEP)
    assert q.dims == p.dims and list(q[STEP].values) == list(p[STEP].values)
    for t in ("A", "B"):
        np.testing.assert_allclose(q.sel({TASK: t}), bh_loop(list(p.sel({TASK: t}).values)))
    assert q.attrs["long_name"] == "q-value (permutation p-value)" and q.attrs["fdr_family"] == STEP
    whole = qvalues(p)  # one family of all 14
    np.testing.assert_allclose(
        whole.values.ravel(), stats.false_discovery_control(p.values.ravel())
    )
    by = qvalues(p.values, dims=1, method="by")
    ref = np.stack([stats.false_discovery_control(r, method="by") for r in p.values])
    np.testing.assert_allclose(by, ref)
    np.testing.assert_allclose(qvalues(p.values.T, dims=0, method="by"), ref.T)


def test_nan_stays_nan_and_does_not_count() -> None:
    p = np.array([0.01, np.nan, 0.04, 0.03, np.nan])
    q = qvalues(p)
    assert np.isnan(q[[1, 4]]).all()
    np.testing.assert_allclose(q[[0, 2, 3]], stats.false_discovery_control([0.01, 0.04, 0.03]))
    assert np.isnan(qvalues(np.full(3, np.nan))).all()


def test_dask_and_errors() -> None:
    p = xr.DataArray(np.linspace(0.001, 0.9, 12).reshape(3, 4), dims=(TASK, STEP))
    xr.testing.assert_allclose(qvalues(p.chunk({TASK: 1}), dims=STEP), qvalues(p, dims=STEP))
    with pytest.raises(ValueError, match="method"):
        qvalues(p, method="holm")
    with pytest.raises(ValueError, match="dims"):
        qvalues(p, dims="seed")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        qvalues(np.array([0.2, 1.5]))
