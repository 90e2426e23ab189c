"""Implicit sensing: a naive decoder reference, planted signals, the unshared null, errors."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from _simulate import sensing_runs
from scipy import stats

from gradcomp.analyze import sensing
from gradcomp.analyze._decoder import loso_correct
from gradcomp.analyze._info import confusion_mi, miller_madow_bias
from gradcomp.dims import ALICE, BOB, SEED, STEP, TASK, WIDTH


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
    # perfect decoding in every seed: no zero-width interval, exact bounds and the flag
    perfect = a.isel({STEP: [3, 4]})
    np.testing.assert_array_equal(perfect["accuracy"], 1.0)
    assert np.all(perfect["accuracy_degenerate"])
    np.testing.assert_allclose(perfect["accuracy_lo"], 0.025 ** (1 / 16), rtol=1e-12)
    np.testing.assert_array_equal(perfect["accuracy_hi"], 1.0)
    assert np.all(perfect["information"] > perfect["information_null"])
    assert np.all(perfect["information_lo"] < perfect["information"])
    assert np.all(perfect["information_hi"] == perfect["information"])
    assert "exact" in out.attrs["undefined_reason"]
    np.testing.assert_array_equal(a["onset"], [17 * 4, 17 * 4])
    # head B never sees a remote effect: chance exactly, no onset
    b = out.sel({TASK: "B"})
    np.testing.assert_array_equal(b["accuracy"], 0.5)
    assert np.all(np.isnan(b["onset"]))
    assert float(out["information_bias"].max()) == pytest.approx(1 / (2 * 32 * np.log(2)))


def test_unshared_control_sits_exactly_at_chance() -> None:
    """Identical traces (common random numbers, no remote effect): 0.5 by construction, flagged
    as degenerate with exact bounds around it (not a zero-width interval)."""
    out = sensing(ensemble(onset=None), window=5, n_permutations=199, n_boot=99)
    np.testing.assert_array_equal(out["accuracy"], 0.5)
    assert np.all(out["accuracy_degenerate"])
    half = (1 - 0.025 ** (1 / 16)) / 2
    np.testing.assert_allclose(out["accuracy_lo"], 0.5 - half)
    np.testing.assert_allclose(out["accuracy_hi"], 0.5 + half)
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
        sensing(ds, window=3, n_permutations=10)
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
    again = sensing(ds, window=10, n_permutations=199, n_boot=99)
    xr.testing.assert_identical(out, again.assign_attrs(history=out.attrs["history"]))


def agreeing_loop(value: float, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Reference: Clopper-Pearson upper bound of 0 differing seeds of n (scipy), spread over
    the room a differing seed has."""
    q = stats.binomtest(0, n).proportion_ci(1 - alpha, method="exact").high
    return value - q * value, value + q * (1 - value)


def test_agreeing_bounds_match_clopper_pearson() -> None:
    from gradcomp.analyze.sensing import _agreeing_bounds

    for value in (0.0, 0.5, 1.0):
        for n in (5, 16, 128):
            np.testing.assert_allclose(_agreeing_bounds(value, n, 0.05), agreeing_loop(value, n))


def test_max_statistic_adjustment_against_a_loop() -> None:
    """p_adjusted(w) = (1 + #{max over windows of the flipped accuracy >= acc(w)}) / (1 + P)."""
    from gradcomp.analyze.sensing import _cell, _features

    ds = ensemble(n_seeds=8, n_steps=20, onset=10, size=0.05, rng=3)
    out = sensing(ds, window=5, n_permutations=99, n_boot=9, random_state=4)
    g = np.random.default_rng(4)
    flips = g.integers(0, 2, size=(100, 8))
    flips[0] = 0
    values = ds["loss"].sel({TASK: "A"}).transpose(SEED, ALICE, BOB, STEP).values
    accs = []
    for w in range(4):
        x = _features(values[..., w * 5 : (w + 1) * 5], "A")[0]
        accs.append(_cell(x, flips, 0.05, 9, np.random.default_rng(0))[1])
    accs = np.array(accs)  # (windows, P + 1)
    top = accs[:, 1:].max(0)
    ref = [(1 + np.sum(top >= accs[w, 0])) / 100 for w in range(4)]
    np.testing.assert_allclose(out["p_adjusted"].sel({TASK: "A", "own": 1}), ref)
    from gradcomp.analyze import qvalues

    np.testing.assert_allclose(
        out["q_value"].sel({TASK: "A", "own": 1}),
        stats.false_discovery_control(out["p_value"].sel({TASK: "A", "own": 1}).values),
    )
    assert qvalues is not None


def test_decoder_is_calibrated_on_a_synthetic_null_fast() -> None:
    out = sensing_runs(40, 16, 50, 5)
    assert float((out["p_value"] < 0.05).mean()) <= 0.09
    assert float(out["onset"].notnull().mean()) <= 0.15


@pytest.mark.slow
def test_decoder_is_calibrated_on_a_synthetic_null() -> None:
    """No trace depends on the remote setting: the per-window test rejects at 3-7 %, and a
    false onset over 10 scanned windows happens in at most 7 % of curves."""
    out = sensing_runs(400, 16, 50, 5)
    fpr = float((out["p_value"] < 0.05).mean())
    assert 0.03 <= fpr <= 0.07, fpr
    assert float(out["onset"].notnull().mean()) <= 0.07


@pytest.mark.slow
@pytest.mark.parametrize("shift", [0.3, 3.0])
def test_accuracy_interval_covers(shift: float) -> None:
    """Coverage of the accuracy interval for a partial and a perfect (degenerate) decoder; the
    truth is the mean accuracy over the replications (the decoder's expected accuracy)."""
    out = sensing_runs(200, 16, 20, 10, shift).sel({TASK: "A"})
    truth = out["accuracy"].mean("rep")
    cover = float(((out["accuracy_lo"] <= truth) & (truth <= out["accuracy_hi"])).mean())
    assert cover >= 0.93, (cover, truth.values)


def test_constant_traces_are_flagged_not_confident() -> None:
    """A constant trace carries no information: accuracy 0.5, flagged, exact bounds, no onset."""
    ds = ensemble(n_seeds=6, n_steps=20)
    ds["loss"] = xr.full_like(ds["loss"], 1.5)
    out = sensing(ds, window=10, n_permutations=99, n_boot=99)
    np.testing.assert_array_equal(out["accuracy"], 0.5)
    assert np.all(out["accuracy_degenerate"]) and np.all(out["p_value"] == 1.0)
    assert np.all(out["accuracy_hi"] - out["accuracy_lo"] > 0.4)  # 6 seeds say little
    assert np.all(np.isnan(out["onset"])) and "alike" in out.attrs["undefined_reason"]
