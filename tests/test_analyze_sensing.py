"""Implicit sensing: a naive decoder reference, planted signals, the unshared null, errors."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from scipy import stats

from gradcomp._dims import ALICE, BOB, SEED, STEP, TASK, WIDTH
from gradcomp.analyze import sensing
from gradcomp.analyze._decoder import loso_correct
from gradcomp.analyze._info import confusion_mi, miller_madow_bias


def ensemble(n_seeds: int = 16, n_steps: int = 30, onset: int | None = None, size=0.8, rng=0):
    """Loss traces that ignore the remote setting except (with ``onset``) head A's after it.

    Common random numbers: a seed's trace is the same in every setting pair; from traced step
    index ``onset`` on, head A's loss at bob = 2 is raised by ``size``.
    """
    g = np.random.default_rng(rng)
    base = (
        g.normal(scale=0.3, size=(n_seeds, 1, 1, n_steps, 2)) + np.linspace(2, 0, n_steps)[:, None]
    )
    loss = np.broadcast_to(base, (n_seeds, 2, 2, n_steps, 2)).copy()
    # each head's loss depends on its own setting (A: alice, B: bob)
    loss[..., 0] += g.normal(scale=0.01, size=(n_seeds, 2, 1, n_steps))
    loss[..., 1] += g.normal(scale=0.01, size=(n_seeds, 1, 2, n_steps))
    if onset is not None:
        loss[:, :, 1, onset:, 0] += size
    return xr.Dataset(
        {"loss": ((SEED, ALICE, BOB, STEP, TASK), loss)},
        coords={
            SEED: np.arange(n_seeds),
            ALICE: [1, 2],
            BOB: [1, 2],
            STEP: np.arange(n_steps) * 4,
            TASK: ["A", "B"],
        },
    )


def test_decoder_matches_a_naive_refit_loop() -> None:
    g = np.random.default_rng(0)
    x = g.normal(size=(9, 2, 3))
    x[:, 1] += 0.7
    flips = g.integers(0, 2, size=(6, 9))
    flips[0] = 0
    fast = loso_correct(x, flips)
    for p in range(6):
        for k in range(9):
            train = [(x[j, r], r ^ flips[p, j]) for j in range(9) if j != k for r in range(2)]
            feats = np.array([f for f, _ in train])
            labels = np.array([lab for _, lab in train])
            mu, sd = feats.mean(0), feats.std(0)
            z = (feats - mu) / sd
            c0, c1 = z[labels == 0].mean(0), z[labels == 1].mean(0)
            for r in range(2):
                q = (x[k, r] - mu) / sd
                pred = int(((q - c1) ** 2).sum() < ((q - c0) ** 2).sum())
                assert (pred == (r ^ flips[p, k])) == fast[p, k, r]


def test_information_of_hand_computed_tables() -> None:
    assert confusion_mi(np.array([[5, 0], [0, 5]])) == pytest.approx(1.0)
    assert confusion_mi(np.array([[3, 3], [3, 3]])) == pytest.approx(0.0)
    table = np.array([[8, 2], [3, 7]])
    p = table / table.sum()
    ref = stats.entropy(p.sum(1), base=2) + stats.entropy(p.sum(0), base=2)
    ref -= stats.entropy(p.ravel(), base=2)
    assert confusion_mi(table) == pytest.approx(ref, rel=1e-12)
    assert miller_madow_bias(20) == pytest.approx(1 / (40 * np.log(2)))


def test_planted_signal_has_onset_and_high_accuracy() -> None:
    out = sensing(ensemble(onset=12), window=6, n_permutations=199, n_boot=199)
    a = out.sel({TASK: "A"})
    # windows end at traced indices 5, 11, 17, 23, 29: the signal starts inside window 2
    np.testing.assert_array_equal(a["accuracy"].isel({STEP: [0, 1]}), 0.5)
    assert np.all(a["accuracy"].isel({STEP: [2, 3, 4]}) > 0.9)
    assert np.all(a["p_value"].isel({STEP: [2, 3, 4]}) < 0.01)
    assert np.all(a["accuracy_lo"].isel({STEP: [2, 3, 4]}) > 0.5)
    assert np.all(
        a["information_lo"].isel({STEP: [3, 4]}) > a["information_null"].isel({STEP: [3, 4]})
    )
    np.testing.assert_array_equal(a["onset"], [17 * 4, 17 * 4])
    # head B never sees a remote effect: chance exactly, no onset
    b = out.sel({TASK: "B"})
    np.testing.assert_array_equal(b["accuracy"], 0.5)
    assert np.all(np.isnan(b["onset"]))
    assert float(out["information_bias"].max()) == pytest.approx(1 / (2 * 32 * np.log(2)))


def test_unshared_control_sits_exactly_at_chance() -> None:
    out = sensing(ensemble(onset=None), window=5, n_permutations=199, n_boot=99)
    np.testing.assert_array_equal(out["accuracy"], 0.5)
    np.testing.assert_array_equal(out["p_value"], 1.0)
    np.testing.assert_array_equal(out["information"], 0.0)
    assert np.all(np.isnan(out["onset"]))


def test_noise_without_signal_is_not_called_sensing() -> None:
    """Independent noise per remote setting (no systematic effect): calibrated p-values."""
    ds = ensemble(n_seeds=12, n_steps=60)
    g = np.random.default_rng(5)
    ds["loss"] = ds["loss"] + g.normal(scale=0.3, size=ds["loss"].shape)
    out = sensing(ds, window=3, n_permutations=999, n_boot=99)
    assert float((out["p_value"] < 0.05).mean()) < 0.15
    assert np.all(np.isnan(out["onset"]))


def test_extra_dims_and_dask_give_the_same_answer() -> None:
    ds = xr.concat([ensemble(onset=10), ensemble(onset=None, rng=1)], dim=WIDTH)
    ds = ds.assign_coords({WIDTH: [3, 8]})
    eager = sensing(ds, window=10, n_permutations=199, n_boot=99)
    lazy = sensing(ds.chunk({STEP: 10, WIDTH: 1}), window=10, n_permutations=199, n_boot=99)
    xr.testing.assert_allclose(eager, lazy)
    one = sensing(ds.sel({WIDTH: 8}, drop=True), window=10, n_permutations=199, n_boot=99)
    np.testing.assert_array_equal(eager["accuracy"].sel({WIDTH: 8}), one["accuracy"])


def test_clear_errors() -> None:
    ds = ensemble()
    with pytest.raises(ValueError, match="at least 5 seeds, got 1"):
        sensing(ds.isel({SEED: [0]}))
    with pytest.raises(ValueError, match="'osc_amplitude'"):
        sensing(ds, variable="osc_amplitude")
    with pytest.raises(ValueError, match="too short"):
        sensing(ds, window=40)
    with pytest.raises(ValueError, match="permutations"):
        sensing(ds, window=3, n_permutations=50)
    with pytest.raises(ValueError, match="needs"):
        sensing(ds.isel({ALICE: 0}, drop=True))
    bad = ds.copy()
    bad["loss"] = bad["loss"].where(bad[STEP] != 8)
    with pytest.raises(ValueError, match="non-finite"):
        sensing(bad, window=5, n_permutations=199)


def test_confusion_counts_against_a_loop() -> None:
    from gradcomp.analyze.sensing import _confusion

    g = np.random.default_rng(7)
    correct = g.integers(0, 2, size=(5, 6, 2)).astype(bool)
    flips = g.integers(0, 2, size=(5, 6))
    table = _confusion(correct, flips)
    for p in range(5):
        ref = np.zeros((2, 2), int)
        for k in range(6):
            for r in range(2):
                truth = r ^ flips[p, k]
                ref[truth, truth if correct[p, k, r] else 1 - truth] += 1
        np.testing.assert_array_equal(table[p], ref)
    per_seed = _confusion(correct[0], flips[:1])
    np.testing.assert_array_equal(per_seed.sum(0), table[0])


def test_a_lazily_indexed_recording_is_read_one_window_at_a_time() -> None:
    from xarray.core import indexing

    class Recorded(xr.backends.BackendArray):
        """A backend array (as netCDF files are read) that logs the shape of every read."""

        def __init__(self, arr: np.ndarray) -> None:
            self.arr, self.shape, self.dtype, self.reads = arr, arr.shape, arr.dtype, []

        def __getitem__(self, key):
            return indexing.explicit_indexing_adapter(
                key, self.shape, indexing.IndexingSupport.OUTER, self._raw
            )

        def _raw(self, key: tuple) -> np.ndarray:
            out, axis = self.arr, 0
            for k in key:  # outer indexing, one axis at a time
                out = out[(slice(None),) * axis + (k,)]
                axis += 0 if isinstance(k, (int, np.integer)) else 1
            self.reads.append(out.shape)
            return out

    ds = ensemble(n_steps=30, onset=12)
    backend = Recorded(ds["loss"].values)
    lazy = ds.copy()
    lazy["loss"] = xr.Variable(ds["loss"].dims, indexing.LazilyIndexedArray(backend))
    out = sensing(lazy, window=10, n_permutations=199, n_boot=99)
    assert backend.reads == [(16, 2, 2, 10, 2)] * 3  # three windows, each read once
    xr.testing.assert_identical(out, sensing(ds, window=10, n_permutations=199, n_boot=99))
