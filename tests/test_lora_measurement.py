"""The LoRA measurement: frozen-layer caching, the separate-adapter control, calibrated thresholds.

Every shortcut is checked against the independent per-member reference
(:func:`gradcomp.reference.lora.train_members`) in float64 to 1e-10: the frozen layers' output
computed once (``Batches.hidden``) against the full forward, and the control's half-the-members
expansion (:func:`expand_diagonal`) against training all four setting pairs with separate adapters.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("wordfreq")

from gradcomp.lora import ensemble as ens
from gradcomp.lora import experiment as ex
from gradcomp.lora.experiment import LoraExperiment, calibrate_threshold
from gradcomp.lora.model import (
    LoraHeads,
    SeparateHeads,
    add_lora,
    lora_layers,
    separate_init,
)
from gradcomp.reference.lora import train_members
from tests.test_lora import _problem, tiny_bert

FIELDS = ("loss", "acc", "heldout_acc", "gram", "diverged")
EVERY = staticmethod(lambda t: t % 2 == 0)


def _assert_trace_equals(trace, ref, rtol=1e-10, atol=1e-13):
    for field in FIELDS:
        a, b = getattr(trace, field), np.asarray(ref[field])
        assert a.shape == b.shape, field
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=field)


@pytest.mark.parametrize("layers", [(-1,), (1, 2), (2,)])
def test_frozen_layers_computed_once_equal_the_full_forward(layers):
    model = LoraHeads(add_lora(tiny_bert(layers=3), 2, layers=layers, ffn=True))
    assert model.start == min(i % 3 for i in layers)
    data, init = _problem(model)
    hidden = model.frozen_input(data.ids, data.mask)
    cached = dataclasses.replace(data, hidden=hidden)
    assert model.check_frozen_input(data.ids, data.mask)
    groups = lora_layers(model)
    ref = train_members(model, init, data, groups, lr=1e-2, schedule=lambda t: t % 2 == 0)
    for fn in (ens.train_vmap, ens.train_loop):
        trace = fn(model, init, cached, groups, lr=1e-2, schedule=lambda t: t % 2 == 0)
        _assert_trace_equals(trace, ref)
    assert np.abs(ref["gram"][:, -1, -1]).max() > 0  # the adapters trained


def test_adapters_only_on_the_chosen_layers():
    model = LoraHeads(add_lora(tiny_bert(layers=3), 2, layers=(-1,)))
    assert set(lora_layers(model)) == {
        f"encoder.layer.2.attention.self.{m}" for m in ("query", "key", "value")
    }
    assert all(
        ".layer.2." in n for n, p in model.named_parameters() if p.requires_grad and ".lora_" in n
    )


def test_separate_control_from_half_the_members_equals_all_four_pairs():
    """expand_diagonal of the x == y members equals training every pair with separate adapters."""
    shared = LoraHeads(add_lora(tiny_bert(), 2))
    model = SeparateHeads(shared.encoder)
    data, init_shared = _problem(shared, n_seeds=2, steps=4)
    init = separate_init(init_shared)
    groups = lora_layers(model)
    assert set(groups) == set(lora_layers(shared))  # one group per module, both copies in it
    ref = train_members(model, init, data, groups, lr=2e-2, schedule=lambda t: t % 2 == 0)
    rows = ens.member_table(2)
    diag = np.flatnonzero(rows[:, 1] == rows[:, 2])
    part = ens.train_vmap(
        model,
        {n: v[diag] for n, v in init.items()},
        ens.Batches(data.ids, data.mask, data.labels[diag], data.order[diag], data.n_train),
        groups,
        lr=2e-2,
        schedule=lambda t: t % 2 == 0,
    )
    full = ex.expand_diagonal(part, rows, rows[diag])
    _assert_trace_equals(full, ref)
    g = full.gram[:, :, :, 0, 1]
    assert np.all(g == 0) and np.abs(full.gram[:, -1, -1, 0, 0]).max() > 0


def test_separate_init_starts_each_copy_as_the_shared_model():
    shared = LoraHeads(add_lora(tiny_bert(), 2))
    init = ens.init_member(shared, 7)
    sep = separate_init(init)
    names = {n for n, p in SeparateHeads(shared.encoder).named_parameters() if p.requires_grad}
    assert set(sep) == names
    for n, v in init.items():
        if not n.startswith("heads.B"):
            assert torch.equal(sep[f"copies.A.{n}"], v)
        if not n.startswith("heads.A"):
            assert torch.equal(sep[f"copies.B.{n}"], v)


# ---------------------------------------------------------------- thresholds
def test_calibrated_threshold_splits_the_calibration_runs():
    acc = np.array([0.5, 0.6, 0.6, 0.7, 0.8, 0.9])
    theta = calibrate_threshold(acc)
    assert theta == pytest.approx(0.65)  # 3 of 6 reach it
    assert (acc >= theta).mean() == 0.5
    # ties: the candidate share closest to the target, between attained values
    acc = np.array([0.5, 0.5, 0.5, 0.9])
    assert calibrate_threshold(acc) == pytest.approx(0.7)  # share 0.25 beats 1.0
    assert calibrate_threshold(np.array([0.1, 0.2, 0.3, 0.4]), share=0.25) == pytest.approx(0.35)
    with pytest.raises(ValueError, match="same accuracy"):
        calibrate_threshold(np.full(5, 0.75))
    with pytest.raises(ValueError, match="finite"):
        calibrate_threshold(np.array([0.5, np.nan]))


def test_outcomes_use_each_tasks_threshold():
    cfg = LoraExperiment(n_seeds=1, ranks=(1,), threshold=0.5, control_seeds=0)
    k, s = 4, 2  # members (seed 0: (1,1), (1,2), (2,1), (2,2)), recorded steps
    acc = np.zeros((k, s, 2))
    acc[:, -1, 0] = [0.6, 0.6, 0.6, 0.6]  # head A: setting 1 rows 0,1; setting 2 rows 2,3
    acc[:, -1, 1] = [0.7, 0.9, 0.7, 0.9]  # head B: setting 1 rows 0,2; setting 2 rows 1,3
    tr = ens.Trace(
        [0, 5], ["x", "all"], np.zeros((k, s, 2)), acc, acc, np.zeros((k, s, 2, 2, 2)),
        np.zeros((k, s, 1, 2, 2)), np.zeros((k, s), bool),
    )  # fmt: skip
    thr = {"A1": 0.55, "A2": 0.65, "B1": 0.75, "B2": 0.85}
    ds = ex.to_dataset({"shared": {1: tr}}, cfg, thr)
    a = ds["a"].isel(rank=0, seed=0, step=-1)
    b = ds["b"].isel(rank=0, seed=0, step=-1)
    np.testing.assert_array_equal(a.values, [[1, 1], [-1, -1]])  # (alice, bob)
    np.testing.assert_array_equal(b.values, [[-1, 1], [-1, 1]])
    assert json.loads(ds.attrs["thresholds"]) == thr
    assert float(ds["threshold"].sel(setting=2, task="B")) == 0.85


def _bad(**kw):
    return LoraExperiment.tiny(**kw)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"threshold": 1.0}, "lie in \\(0, 1\\)"),
        ({"threshold": 0.0}, "lie in \\(0, 1\\)"),
        ({"thresholds": {"A1": 0.5, "A2": 0.5, "B1": 0.5, "B2": 1.2}}, "B2 must lie"),
        ({"thresholds": {"A1": 0.5}}, "must name A1, A2, B1 and B2"),
        ({"threshold": 0.6, "calibration_seeds": 4}, "exactly one of"),
        ({"calibration_seeds": 0}, "exactly one of"),
        ({"calibration_first_seed": 1, "n_seeds": 3}, "overlap the measured seeds"),
        ({"calibration_share": 1.0}, "calibration_share"),
    ],
)
def test_bad_outcome_rules_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        _bad(**kw).validate()


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"layers": (7,)}, "out of range"),
        ({"layers": ()}, "adapts nothing"),
        ({"ranks": (1, 400)}, "exceeds the adapted dimension"),
        (
            {"tasks": {"A1": "lang:en,de", "A2": "length:1", "B1": "lang:en,fr", "B2": "length"}},
            "single class",
        ),
    ],
)
def test_bad_experiments_fail_before_training(kw, match, monkeypatch):
    def no_training(*a, **k):
        raise AssertionError("training started")

    monkeypatch.setattr(ex, "_train", no_training)
    with pytest.raises(ValueError, match=match):
        ex.run(_bad(**kw))


def test_thresholds_are_fixed_on_calibration_seeds_only(monkeypatch):
    """Calibration trains only calibration seeds; the measured seeds never change a threshold."""
    trained = []
    real = ex._train

    def spy(cfg, model, init, data):
        trained.append(data.order.shape[0])
        return real(cfg, model, init, data)

    monkeypatch.setattr(ex, "_train", spy)
    cfg = LoraExperiment.tiny(ranks=(1,), steps=4, control_seeds=0, calibration_seeds=3)
    one = ex.run(cfg)
    two = ex.run(dataclasses.replace(cfg, n_seeds=3, first_seed=10))
    assert trained == [12, 8, 12, 12]  # calibration: 3 seeds x 4 pairs, then the measured ones
    assert one.attrs["thresholds"] == two.attrs["thresholds"]
    cal = json.loads(one.attrs["calibration"])
    assert cal["seeds"] == [100_000, 100_001, 100_002] and cal["rank"] == 1
    assert not set(cal["seeds"]) & set(one["seed"].values.tolist())
    for task, theta in json.loads(one.attrs["thresholds"]).items():
        assert 0 < theta < 1
        acc = np.array(cal["tasks"][task]["accuracy"])
        assert cal["tasks"][task]["share_reached"] == pytest.approx((acc >= theta).mean())


def test_component_grams_sum_to_the_lora_gram_and_equal_the_reference():
    model = LoraHeads(add_lora(tiny_bert(), 3, ffn=True))
    data, init = _problem(model, steps=3)
    groups = lora_layers(model)
    trace = ens.train_vmap(model, init, data, groups, lr=1e-2)
    ref = train_members(model, init, data, groups, lr=1e-2)
    assert trace.component_gram.shape == (8, 4, 3, 2, 2)
    np.testing.assert_allclose(trace.component_gram, ref["component_gram"], rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(
        trace.component_gram.sum(2), trace.gram[:, :, -1], rtol=1e-10, atol=1e-13
    )
    assert np.abs(trace.component_gram[:, -1, :, 0, 1]).min() > 0  # every component moved


def test_control_on_some_seeds_shows_no_signaling_and_s_at_most_2():
    """Separate adapters: Δ = 0 and S ≤ 2 exactly (each seed is a local deterministic model)."""
    from gradcomp import chsh

    ds = ex.run(LoraExperiment.tiny(ranks=(2,), n_seeds=4, control_seeds=3, threshold=0.7))
    sep = ds.sel(adapters="separate")
    assert np.isnan(sep["a"].sel(seed=3)).all() and not np.isnan(sep["a"].sel(seed=[0, 1, 2])).any()
    assert not sep["diverged"].any()
    est = chsh.estimate(ds["a"], ds["b"], n_boot=99)
    ctl = est.sel(adapters="separate")
    assert (ctl["n_seeds"] == 3).all() and (est.sel(adapters="shared")["n_seeds"] == 4).all()
    np.testing.assert_array_equal(ctl["delta"].values, 0.0)
    assert (ctl["S"] <= 2 + 1e-12).all()
    g = ds["gram"].sel(adapters="separate", layer="all", seed=[0, 1, 2])
    assert (g.sel(task="A", task_j="B") == 0).all() and (g.sel(task="A", task_j="A") > 0).any()
    # component coordinate per rank, component Grams present on both conditions
    assert ds["component_gram"].sizes["component"] == 2


def test_a_frozen_cache_that_disagrees_warns_and_runs_the_full_forward(monkeypatch):
    """The cache's self-check failing is loud (a warning) and both conditions fall back."""
    monkeypatch.setattr(LoraHeads, "check_frozen_input", lambda self, ids, mask: False)
    cfg = LoraExperiment.tiny(ranks=(1,), n_seeds=1, steps=2, per_language=8, threshold=0.6)
    with pytest.warns(RuntimeWarning, match="running the full forward") as record:
        ds = ex.run(dataclasses.replace(cfg, layers=(-1,)))
    ours = [str(w.message) for w in record if "running the full forward" in str(w.message)]
    names = {m.split("for ")[1].split(";")[0] for m in ours}
    assert names == {"LoraHeads", "SeparateHeads"}
    plain = ex.run(dataclasses.replace(cfg, layers=(-1,), cache_frozen=False))
    np.testing.assert_array_equal(ds["loss"].values, plain["loss"].values)
