"""Conflict analyzer: hand-computed values, Aligned-MTL's GMS, Recon's count, laziness."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gradcomp.analyze import conflict
from gradcomp.dims import ALL, LAYER, SEED, STEP, TASK, TASK_J, UNIT


def recording(grads: np.ndarray, units: int = 0) -> xr.Dataset:
    """A recording from explicit per-task gradients ``grads[step, task, dim]`` (layer 'all').

    With ``units`` the gradient is split into ``units`` equal rows (a unit's incoming weights).
    """
    n_steps, n_tasks, _ = grads.shape
    tasks = [f"t{i}" for i in range(n_tasks)]
    gram = np.einsum("sid,sjd->sij", grads, grads)
    ds = xr.Dataset(
        {"gram": ((STEP, LAYER, TASK, TASK_J), gram[:, None])},
        coords={STEP: np.arange(n_steps) * 3, LAYER: [ALL], TASK: tasks, TASK_J: tasks},
    )
    if units:
        rows = grads.reshape(n_steps, n_tasks, units, -1)
        ug = np.einsum("siud,sjud->suij", rows, rows)
        ds["unit_gram"] = ((STEP, LAYER, UNIT, TASK, TASK_J), ug[:, None])
        ds = ds.assign_coords({UNIT: np.arange(units)})
    return ds


def test_hand_computed_two_tasks() -> None:
    # step 0: gA=(1,0), gB=(-1,1): cos=-1/sqrt2, GMS=2*1*sqrt2/(1+2), energy=1
    # step 1: gA=(2,0), gB=(1,1):  cos=+1/sqrt2, GMS=2*2*sqrt2/(4+2), energy=0
    # step 2: gA=(0,1), gB=(0,-3): cos=-1,       GMS=2*1*3/(1+9),     energy=3
    g = np.array([[[1.0, 0], [-1, 1]], [[2, 0], [1, 1]], [[0, 1], [0, -3]]])
    out = conflict(recording(g), window=2).sel({LAYER: ALL, TASK: "t0", TASK_J: "t1"})
    np.testing.assert_allclose(out["cosine"], [-(2**-0.5), 2**-0.5, -1.0], rtol=1e-12)
    np.testing.assert_allclose(
        out["gms"], [2 * np.sqrt(2) / 3, 4 * np.sqrt(2) / 6, 0.6], rtol=1e-12
    )
    np.testing.assert_allclose(out["conflict_energy"], [1.0, 0.0, 3.0], rtol=1e-12)
    np.testing.assert_array_equal(out["conflicting"], [1.0, 0.0, 1.0])
    np.testing.assert_allclose(out["conflict_frequency"], [np.nan, 0.5, 0.5])
    assert int(out["conflict_count"]) == 2
    # diagonal: a task never conflicts with itself, GMS 1
    diag = conflict(recording(g), window=2).sel({TASK: "t0", TASK_J: "t0", LAYER: ALL})
    np.testing.assert_allclose(diag["cosine"], 1.0)
    np.testing.assert_allclose(diag["gms"], 1.0)


def aligned_mtl_gms(gi: np.ndarray, gj: np.ndarray) -> float:
    """Aligned-MTL / PCGrad: 2 ||gi|| ||gj|| / (||gi||^2 + ||gj||^2)."""
    ni, nj = np.linalg.norm(gi), np.linalg.norm(gj)
    return 2 * ni * nj / (ni**2 + nj**2)


def recon_count(grads: np.ndarray, s: float) -> int:
    """Recon's S-conflict score: over steps and task pairs i < j, count cos(gi, gj) < S."""
    count = 0
    for step in grads:
        for i, j in itertools.combinations(range(len(step)), 2):
            cos = step[i] @ step[j] / (np.linalg.norm(step[i]) * np.linalg.norm(step[j]))
            count += int(cos < s)
    return count


@pytest.mark.parametrize("threshold", [0.0, -0.02, 0.3])
def test_matches_aligned_mtl_and_recon_on_the_same_gradients(threshold: float) -> None:
    rng = np.random.default_rng(0)
    g = rng.normal(size=(25, 3, 6))
    out = conflict(recording(g), threshold=threshold, window=5).sel({LAYER: ALL})
    tasks = out[TASK].values
    for s, i, j in itertools.product(range(25), range(3), range(3)):
        got = float(out["gms"].isel({STEP: s}).sel({TASK: tasks[i], TASK_J: tasks[j]}))
        np.testing.assert_allclose(got, aligned_mtl_gms(g[s, i], g[s, j]), rtol=1e-12)
    assert int(out["recon_score"]) == recon_count(g, threshold)
    # condition number of the task-gradient matrix (Aligned-MTL): sigma_max / sigma_min
    sv = np.linalg.svd(g, compute_uv=False)
    np.testing.assert_allclose(out["condition_number"], sv[:, 0] / sv[:, -1], rtol=1e-9)


def test_frequency_is_a_rolling_share_against_a_loop() -> None:
    rng = np.random.default_rng(1)
    g = rng.normal(size=(30, 2, 4))
    out = conflict(recording(g), window=7).sel({LAYER: ALL, TASK: "t0", TASK_J: "t1"})
    cos = np.array([a @ b / np.linalg.norm(a) / np.linalg.norm(b) for a, b in g])
    ref = [np.nan] * 6 + [np.mean(cos[t - 6 : t + 1] < 0) for t in range(6, 30)]
    np.testing.assert_allclose(out["conflict_frequency"], ref, rtol=1e-12)


def test_per_unit_competition_against_vectors() -> None:
    rng = np.random.default_rng(2)
    g = rng.normal(size=(12, 2, 8))
    out = conflict(recording(g, units=4), window=4).sel({LAYER: ALL, TASK: "t0", TASK_J: "t1"})
    rows = g.reshape(12, 2, 4, 2)
    cos = np.einsum("sud,sud->su", rows[:, 0], rows[:, 1]) / (
        np.linalg.norm(rows[:, 0], axis=-1) * np.linalg.norm(rows[:, 1], axis=-1)
    )
    np.testing.assert_allclose(out["unit_cosine"], cos, rtol=1e-12)
    t = 9
    np.testing.assert_allclose(
        out["unit_conflict_frequency"].isel({STEP: t}), (cos[t - 3 : t + 1] < 0).mean(0)
    )
    np.testing.assert_allclose(
        out["unit_conflict_strength"].isel({STEP: t}),
        np.clip(-cos[t - 3 : t + 1], 0, None).mean(0),
        rtol=1e-12,
    )


def test_zero_gradient_gives_nan_cosine_not_a_conflict() -> None:
    g = np.array([[[1.0, 0.0], [0.0, 0.0]]] * 3)
    out = conflict(recording(g), window=2).sel({LAYER: ALL, TASK: "t0", TASK_J: "t1"})
    assert np.all(np.isnan(out["cosine"])) and np.all(np.isnan(out["conflicting"]))
    assert int(out["conflict_count"]) == 0
    assert np.all(np.isinf(out["condition_number"]))  # rank-deficient task-gradient matrix


def test_nan_padded_gram_gives_nan_not_an_error() -> None:
    ds = recording(np.random.default_rng(5).normal(size=(4, 2, 3)))
    ds["gram"] = ds["gram"].where(ds[STEP] != 3)
    out = conflict(ds, window=2).sel({LAYER: ALL})
    assert np.isnan(out["condition_number"].sel({STEP: 3}))
    assert np.all(np.isfinite(out["condition_number"].sel({STEP: [0, 6, 9]})))


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, (4, 3, 5), elements=st.floats(-1e3, 1e3, allow_subnormal=False)))
def test_cosine_symmetric_and_bounded(g: np.ndarray) -> None:
    cos = conflict(recording(g), window=1)["cosine"]
    finite = np.isfinite(cos.values)
    assert np.all(np.abs(cos.values[finite]) <= 1.0)
    xr.testing.assert_equal(cos, cos.rename({TASK: TASK_J, TASK_J: TASK}).transpose(*cos.dims))


def test_extra_dims_and_lazy_dask_match_a_loop_over_seeds() -> None:
    rng = np.random.default_rng(3)
    per_seed = [recording(rng.normal(size=(20, 2, 6)), units=2) for _ in range(3)]
    ds = xr.concat(per_seed, dim=xr.DataArray([0, 1, 2], dims=SEED, name=SEED))
    lazy = conflict(ds.chunk({SEED: 1, STEP: 5}), window=4)
    assert lazy["conflict_frequency"].chunks is not None  # nothing computed yet
    eager = conflict(ds, window=4)
    xr.testing.assert_allclose(lazy.compute(), eager)
    for k, one in enumerate(per_seed):
        xr.testing.assert_allclose(
            eager.drop_vars(["conflict_count", "recon_score"]).isel({SEED: k}, drop=True),
            conflict(one, window=4).drop_vars(["conflict_count", "recon_score"]),
        )


def test_clear_errors() -> None:
    g = np.ones((3, 2, 2))
    with pytest.raises(ValueError, match=r"'gram'.*record"):
        conflict(xr.Dataset({"loss": (STEP, [1.0, 2.0])}))
    with pytest.raises(ValueError, match=r"too short.*3 entries"):
        conflict(recording(g), window=5)
    with pytest.raises(ValueError, match=r"'unit_gram'.*units=True"):
        conflict(recording(g), window=2, units=True)
    with pytest.raises(ValueError, match="threshold"):
        conflict(recording(g), threshold=2.0)


def test_round_trips_through_netcdf(tmp_path) -> None:
    g = np.random.default_rng(4).normal(size=(6, 2, 4))
    out = conflict(recording(g, units=2), window=3)
    out.to_netcdf(tmp_path / "c.nc", engine="h5netcdf")
    back = xr.load_dataset(tmp_path / "c.nc", engine="h5netcdf")
    xr.testing.assert_allclose(back, out)
    assert back["gms"].attrs["long_name"]


def test_outputs_carry_their_own_labels_not_the_grams() -> None:
    """xarray keeps attrs through arithmetic: the cosine must not read "inner product ..."."""
    from gradcomp.analyze.conflict import LABELS

    g = np.array([[[1.0, 0], [-1, 1]], [[2, 0], [1, 1]]])
    rec = recording(g)
    rec["gram"].attrs.update(long_name="inner product of per-task gradients", units="loss^2")
    out = conflict(rec, window=2)
    for name in ("cosine", "conflicting"):
        assert out[name].attrs["long_name"] == LABELS[name][0]
        assert out[name].attrs["units"] == LABELS[name][1]
