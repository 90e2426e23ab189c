"""The LoRA-rank experiment end to end on the bundled MiniLM; CLI, scripts, record cross-check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("wordfreq")

from _scripts import load_script

import gradcomp
from gradcomp.lora import LoraExperiment, run
from gradcomp.lora import ensemble as ens
from gradcomp.lora import experiment as experiment_mod
from gradcomp.lora.model import LoraHeads, add_lora, lora_layers


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[xr.Dataset, Path]:
    """analyses/lora_rank.py --tiny (the same code path as ``gradcomp lora --tiny``)."""
    out = tmp_path_factory.mktemp("lora")
    assert (
        load_script("analyses/lora_rank.py").main(["--tiny", "--n-boot", "99", "--out", str(out)])
        == 0
    )
    return xr.open_dataset(out / "lora_rank.nc", engine="h5netcdf").load(), out


def test_tiny_summary_json_matches_the_dataset(tiny):
    """lora_rank.py's summary (quoted in the docs) against a per-run loop over the dataset."""
    from gradcomp import summary

    ds, out = tiny
    doc = summary.read(out / "lora_rank.json")
    v = doc["values"]
    assert doc["timings"]["wall_s"] > 0 and doc["machine"]["logical_cores"] >= 1
    assert v["pool"]["n_words"] == v["pool"]["n_train"] + v["pool"]["n_heldout"]
    assert v["thresholds"] == pytest.approx(json.loads(ds.attrs["thresholds"]), abs=1e-4)
    assert v["calibration"]["n_seeds"] == 2 and v["calibration"]["first_seed"] == 100_000
    end = ds.isel(step=-1).sel(adapters="shared")
    for i, r in enumerate(ds["rank"].values):
        for head, own, remote, var in (("A", "alice", "bob", "a"), ("B", "bob", "alice", "b")):
            for x in (1, 2):
                acc, plus = [], []
                for s in ds["seed"].values:
                    for y in (1, 2):
                        cell = end.sel(rank=r, seed=s, **{own: x, remote: y})
                        acc.append(float(cell["heldout_acc"].sel(task=head)))
                        plus.append(float(cell[var]) == 1)
                task = v["shared"]["tasks"][f"{head}{x}"]
                assert task["heldout_acc_mean"][i] == pytest.approx(np.mean(acc), abs=1e-3)
                assert task["heldout_acc_sd"][i] == pytest.approx(np.std(acc, ddof=1), abs=1e-3)
                assert task["share_plus"][i] == pytest.approx(np.mean(plus), abs=1e-3)


def test_tiny_experiment_dataset(tiny):
    ds, _ = tiny
    assert ds.attrs["method"] == "vmap"
    assert dict(ds["a"].sizes) == {
        "adapters": 2, "rank": 2, "seed": 2, "alice": 2, "bob": 2, "step": 5
    }  # fmt: skip
    assert list(ds["adapters"].values) == ["shared", "separate"]
    assert ds["gram"].dims == (
        "adapters", "rank", "seed", "alice", "bob", "step", "layer", "task", "task_j"
    )  # fmt: skip
    assert list(ds["task"].values) == ["A", "B"] and ds["layer"].values[-1] == "all"
    assert set(np.unique(ds["a"].values)) <= {-1, 1} and ds["a"].dtype == np.float32
    assert ds["diverged"].dims == ds["a"].dims and not ds["diverged"].any()
    # the outcome: held-out accuracy against the calibrated threshold of the head's own task
    theta = json.loads(ds.attrs["thresholds"])
    assert ds.attrs["thresholds_from"] == "calibration seeds"
    for head, own, var in (("A", "alice", "a"), ("B", "bob", "b")):
        for x in (1, 2):
            acc = ds["heldout_acc"].sel(task=head, **{own: x})
            rule = np.where(acc >= theta[f"{head}{x}"], 1, -1)
            np.testing.assert_array_equal(ds[var].sel(**{own: x}).values, rule)
    # "all" is the sum of the per-module Grams; Grams are symmetric PSD
    g = ds["gram"]
    np.testing.assert_allclose(
        g.sel(layer="all"), g.isel(layer=slice(0, -1)).sum("layer"), rtol=1e-5
    )
    np.testing.assert_allclose(g.values, np.swapaxes(g.values, -1, -2), rtol=1e-6)
    assert (ds["grad_norm"] >= 0).all()
    # training moved the loss down on average
    loss = ds["loss"].mean(("adapters", "rank", "seed", "alice", "bob", "task"))
    assert float(loss.isel(step=-1)) < float(loss.isel(step=0))
    for name in ("a", "loss", "gram", "heldout_acc"):
        assert "long_name" in ds[name].attrs and "units" in ds[name].attrs


def test_tiny_summary_and_figure(tiny, tmp_path):
    _, out = tiny
    summary = xr.open_dataset(out / "lora_rank_summary.nc", engine="h5netcdf").load()
    for name in ("S", "S_lo", "S_hi", "delta"):
        assert summary[name].dims == ("adapters", "rank", "step"), name
    for name in ("generalization", "conflict_cosine"):
        assert summary[name].dims == ("rank", "step"), name
    assert (summary["delta"].sel(adapters="separate") == 0).all()
    assert (summary["S_lo"] <= summary["S"] + 1e-12).all()
    assert (np.abs(summary["S"]) <= 4).all()
    assert "sensing" in summary.attrs  # 2 seeds: skipped, and it says so
    png = tmp_path / "fig.png"
    args = ["--summary", str(out / "lora_rank_summary.nc"), "--out", str(png), "--dpi", "40"]
    args += ["--stamp", ""]
    assert load_script("figures/lora_rank.py").main(args) == 0
    assert png.stat().st_size > 1000


def test_huge_learning_rate_flags_members_and_summary_refuses():
    """lr = 1e30: every member's LoRA product overflows after the first Adam step."""
    from gradcomp.lora.summary import summarize

    cfg = LoraExperiment.tiny(
        ranks=(1,), n_seeds=2, steps=2, every=1, per_language=8, lr=1e30, threshold=0.6,
        control_seeds=0,
    )  # fmt: skip
    ds = run(cfg)
    flags = ds["diverged"].sel(rank=1)
    assert not flags.sel(step=0).any() and flags.sel(step=2).all()
    np.testing.assert_array_equal(np.isnan(ds["a"]), ds["diverged"])
    np.testing.assert_array_equal(np.isnan(ds["b"]), ds["diverged"])
    with pytest.raises(
        ValueError, match=r"100.0% of the lora runs at rank 1 .*learning rate 1e\+30"
    ):
        summarize(ds, n_boot=20)
    s = summarize(ds, n_boot=20, max_diverged=1.0)
    assert float(s["diverged_share"].sel(rank=1, step=2)) == 1.0
    assert int(s["n_excluded"].sel(rank=1, step=2)) == 2 and np.isnan(float(s["S"][0, -1]))
    assert float(s["diverged_share"].sel(rank=1, step=0)) == 0.0


def test_cli_options_reach_the_config():
    from gradcomp.cli import build_parser
    from gradcomp.commands.lora import config_from_args

    args = build_parser().parse_args(
        ["lora", "--tiny", "--ranks", "1", "3", "--seeds", "3", "--task", "A2=freq:4.5",
         "--batch-size", "0", "--ffn", "--outcome-on", "train"]
    )  # fmt: skip
    cfg = config_from_args(args)
    assert cfg.ranks == (1, 3) and cfg.n_seeds == 3 and cfg.num_layers == 2
    assert cfg.tasks["A2"] == "freq:4.5" and cfg.tasks["A1"] == "lang:en,de"
    assert cfg.batch_size is None and cfg.ffn and cfg.outcome_on == "train"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["lora", "--tiny", "--small"])


def test_bad_input_fails_before_training(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("training started")

    monkeypatch.setattr(experiment_mod, "_train_rank", boom)
    monkeypatch.setattr(experiment_mod, "_train", boom)
    with pytest.raises(ValueError, match="unknown language"):
        run(LoraExperiment.tiny(languages=("en", "zz")))
    with pytest.raises(ValueError, match="match no Linear"):
        run(LoraExperiment.tiny(targets=("q_proj",)))
    with pytest.raises(ValueError, match="does not exist"):
        run(LoraExperiment.tiny(model="/no/such/dir"))
    with pytest.raises(ValueError, match="ranks"):
        run(LoraExperiment.tiny(ranks=(0,)))


def test_vmap_failure_falls_back_to_the_loop_with_a_warning(monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("vmap: data-dependent control flow")

    monkeypatch.setattr(experiment_mod, "train_vmap", broken)
    cfg = LoraExperiment.tiny(ranks=(1,), n_seeds=1, steps=2, per_language=8, threshold=0.6)
    with pytest.warns(RuntimeWarning, match="one by one"):
        ds = run(cfg)
    assert ds.attrs["method"] == "loop" and ds.sizes["seed"] == 1
    with pytest.raises(RuntimeError, match="vmap"):
        run(cfg.__class__.tiny(ranks=(1,), n_seeds=1, steps=2, per_language=8, method="vmap"))


def test_ensemble_gram_equals_gradcomp_record():
    """The vectorised ensemble's Gram equals gradcomp.record on the plain peft model."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        attn_implementation="eager",
    )
    model = LoraHeads(add_lora(BertModel(cfg, add_pooling_layer=False).double(), 2))
    groups = lora_layers(model)
    table = ens.member_table(1)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(3, 40, (12, 5), generator=g)
    mask = torch.ones_like(ids)
    labels = torch.randint(0, 2, (4, 2, 12), generator=g)
    order = torch.stack([ens.batch_order(8, 2, 4, 7) for _ in table])
    init = {n: v[None].repeat(4, *[1] * v.dim()) for n, v in ens.init_member(model, 7).items()}
    data = ens.Batches(ids, mask, labels, order, 8)
    trace = ens.train_vmap(model, init, data, groups, lr=0.05)
    # replay member 3 by hand with record (Adam, same batches)
    params = [p for n, p in model.named_parameters() if n in init]
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in init:
                p.copy_(init[n][3])
    opt = torch.optim.Adam(params, lr=0.05, foreach=False)
    names = [n for n in dict(model.named_parameters()) if ".lora_" in n]
    with gradcomp.record(model, ["A", "B"], shared=names, layers=dict(groups.items())) as rec:
        for step in range(3):
            idx = order[3, step]
            out = model(ids[idx], mask[idx])
            losses = {
                t: torch.nn.functional.cross_entropy(out[t], labels[3, i, idx])
                for i, t in enumerate("AB")
            }
            opt.zero_grad()
            rec.backward(losses, step=step)
            if step < 2:
                opt.step()
    ref = rec.to_dataset()
    assert list(ref["layer"].values) == trace.layers
    np.testing.assert_allclose(trace.gram[3], ref["gram"].values, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(trace.loss[3], ref["loss"].values, rtol=1e-12)


@pytest.mark.slow
def test_small_setting_end_to_end(tmp_path):
    """The small CPU setting (ranks 1-4, 5 seeds, 30 steps) end to end: about 2.5 min on 2 cores."""
    from gradcomp.cli import main

    assert main(["lora", "--small", "--n-boot", "199", "--out", str(tmp_path)]) == 0
    s = xr.open_dataset(tmp_path / "lora_rank_summary.nc", engine="h5netcdf")
    assert list(s["rank"].values) == [1, 2, 4] and "sensing_accuracy" in s


def test_cli_measurement_options_reach_the_config():
    from gradcomp.cli import build_parser
    from gradcomp.commands.lora import config_from_args

    args = build_parser().parse_args(
        ["lora", "--cpu", "--layers=-2,-1", "--calibration-seeds", "12", "--control-seeds", "3"]
    )
    cfg = config_from_args(args)
    assert cfg.layers == (-2, -1) and cfg.n_calibration() == 12 and cfg.control_seeds == 3
    assert cfg.n_seeds == 150 and cfg.ranks == (1, 2, 4, 8, 16)
    assert cfg.tasks == experiment_mod.SCREENED_TASKS
    fixed = config_from_args(build_parser().parse_args(["lora", "--cpu", "--threshold", "0.7"]))
    assert fixed.n_calibration() == 0 and fixed.fixed_thresholds()["B2"] == 0.7
    with pytest.raises(SystemExit):
        build_parser().parse_args(["lora", "--layers", "x"])


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--threshold", "1.5"], "must lie in (0, 1)"),
        (["--threshold", "0.6", "--calibration-seeds", "3"], "exactly one of"),
        (["--seeds", "3", "--calibration-seeds", "2", "--control-seeds", "5"], "control_seeds"),
    ],
)
def test_cli_bad_measurement_options_exit_with_one_line(argv, message, tmp_path, capsys):
    from gradcomp.cli import main

    assert main(["lora", "--tiny", *argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_crashed_run_resumes_from_its_finished_ranks(tmp_path, monkeypatch):
    """With ``partial=``, every finished rank is kept; a rerun trains only what is missing."""
    cfg = LoraExperiment.tiny(ranks=(1, 2), n_seeds=1, steps=2, per_language=8, threshold=0.6)
    real, calls = experiment_mod._train_rank, []

    def crash_at_rank_2(cfg_, encoder, rank, *a):
        calls.append(rank)
        if rank == 2 and len(calls) == 2:
            raise KeyboardInterrupt
        return real(cfg_, encoder, rank, *a)

    monkeypatch.setattr(experiment_mod, "_train_rank", crash_at_rank_2)
    partial = tmp_path / "partial"
    with pytest.raises(KeyboardInterrupt):
        run(cfg, partial=partial)
    assert (partial / "rank1.pkl").exists() and not (partial / "rank2.pkl").exists()
    ds = run(cfg, partial=partial)
    assert calls == [1, 2, 2] and not partial.exists()
    plain = run(cfg)
    xr.testing.assert_identical(ds.drop_attrs(), plain.drop_attrs())
    other = LoraExperiment.tiny(ranks=(1,), n_seeds=1, steps=2, per_language=8, threshold=0.6)
    partial.mkdir()
    (partial / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="another configuration"):
        run(other, partial=partial)


def test_task_screen_script_runs_and_applies_its_rule(tmp_path):
    """analyses/lora_screen.py --tiny: every candidate set screened, the rule applied as stated."""
    from gradcomp import summary

    script = load_script("analyses/lora_screen.py")
    assert script.main(["--tiny", "--out", str(tmp_path)]) == 0
    v = summary.read(tmp_path / "lora_screen.json")["values"]
    assert len(v["sets"]) == len(script.CANDIDATES) and v["first_seed"] == 100_000
    for st in v["sets"]:
        assert set(st["pairs"]) == {"A1-B1", "A1-B2", "A2-B1", "A2-B2"}
        low = np.mean([p["deficit"][0] for p in st["pairs"].values()])
        assert st["deficit_low"] == pytest.approx(low, abs=1e-3)
        assert st["qualifies"] == all(t["learned"] for t in st["tasks_learned"].values())
    ok = [i for i, st in enumerate(v["sets"]) if st["qualifies"]]
    best = max(ok, key=lambda i: v["sets"][i]["relief"]) if ok else None
    assert v["selected"] == best


def test_measured_tasks_are_the_committed_screens_selection():
    from gradcomp import summary

    v = summary.read(summary.ROOT / "analyses" / "summaries" / "lora_screen.json")["values"]
    assert v["selected"] is not None
    assert v["sets"][v["selected"]]["tasks"] == dict(experiment_mod.SCREENED_TASKS)
    assert v["first_seed"] >= LoraExperiment.cpu().n_seeds  # screened on unmeasured seeds


def test_mechanism_script_uses_the_measured_thresholds(tmp_path):
    """analyses/lora_mechanism.py --tiny: the committed thresholds, sensing with its intervals."""
    from gradcomp import summary

    assert load_script("analyses/lora_mechanism.py").main(
        ["--tiny", "--n-boot", "99", "--out", str(tmp_path)]
    ) == 0  # fmt: skip
    v = summary.read(tmp_path / "lora_mechanism.json")["values"]
    committed = summary.read(summary.ROOT / "analyses" / "summaries" / "lora_rank.json")
    assert v["thresholds"] == committed["values"]["thresholds"]
    assert v["n_seeds"] == 5 and len(v["steps"]) == 9
    for cell in v["sensing"].values():
        for lo, acc, hi in zip(
            cell["accuracy_lo"], cell["accuracy"], cell["accuracy_hi"], strict=True
        ):
            assert lo <= acc <= hi and 0 <= lo and hi <= 1


def test_committed_measurement_outcomes_vary_and_control_is_local():
    """What docs/lora.md says of the committed --cpu run, checked on its summary."""
    from gradcomp import summary

    v = summary.read(summary.ROOT / "analyses" / "summaries" / "lora_rank.json")["values"]
    for task in v["shared"]["tasks"].values():
        assert all(0 < share < 1 for share in task["share_plus"])
    assert all(d == 0 for d in v["separate"]["delta"])
    assert all(s <= 2 for s in v["separate"]["S"])
    assert v["calibration"]["first_seed"] >= v["n_seeds"]  # calibration seeds were not measured
