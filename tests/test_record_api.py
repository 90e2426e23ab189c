"""The recorder's contract: schedule, errors, hooks, non-finite losses, flushing, reduce, store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from torch import Tensor, nn

import gradcomp
from gradcomp.recorder import NonfiniteLossWarning
from gradcomp.recorder.stats import from_stacks
from gradcomp.reference import gram_reference, per_task_gradients

TASKS = ["a", "b"]


def _model(seed: int = 0) -> nn.ModuleDict:
    torch.manual_seed(seed)
    return nn.ModuleDict(
        {
            "trunk": nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4)),
            "heads": nn.ModuleDict({t: nn.Linear(4, 1) for t in TASKS}),
        }
    ).double()


X = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
ROWS = {"a": slice(0, 4), "b": slice(4, 8)}


def _losses(m: nn.Module, scale: float = 1.0) -> tuple[dict[str, Tensor], Tensor]:
    h = m["trunk"](X)
    return {t: scale * m["heads"][t](h[ROWS[t]]).pow(2).mean() for t in TASKS}, h


def _hooks(m: nn.Module) -> int:
    """Hooks and instance-level ``forward`` overrides (how "rows" routes plain Linears)."""
    return sum(
        len(x._forward_hooks) + len(x._backward_hooks) + ("forward" in x.__dict__)
        for x in m.modules()
    )


def test_schedule_records_only_scheduled_steps_and_unscheduled_is_plain() -> None:
    m, plain = _model(), _model()
    with gradcomp.record(m, TASKS, every=4) as rec:
        for _ in range(10):
            losses, _ = _losses(m)
            m.zero_grad()
            rec.backward(losses)
            lp, _ = _losses(plain)
            plain.zero_grad()
            (lp["a"] + lp["b"]).backward()
            for p, q in zip(m.parameters(), plain.parameters(), strict=True):
                torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-14)
    ds = rec.to_dataset()
    assert ds.step.values.tolist() == [0, 4, 8]
    assert ds.attrs["schedule"].startswith("linear(every=4")


def test_logarithmic_schedule_and_explicit_steps() -> None:
    m = _model()
    with gradcomp.record(m, TASKS, every=gradcomp.logarithmic(1, 100, num=5)) as rec:
        for step in [0, 1, 2, 3, 10, 32, 50, 100]:
            losses, _ = _losses(m)
            rec.backward(losses, step=step)
    assert rec.to_dataset().step.values.tolist() == [0, 1, 3, 10, 32, 100]


def test_dataset_contract_and_netcdf_round_trip(tmp_path: Path) -> None:
    m = _model()
    with gradcomp.record(m, {"a": 1.0, "b": 0.5}, units=True, path=tmp_path / "r.nc") as rec:
        for _ in range(3):
            losses, _ = _losses(m)
            rec.backward(losses)
    ds = rec.to_dataset()
    assert set(ds.data_vars) == {"loss", "gram", "grad_norm", "cosine", "unit_gram"}
    assert ds.gram.dims == ("step", "layer", "task", "task_j")
    assert ds.unit_gram.dims == ("step", "layer", "unit", "task", "task_j")
    assert list(ds.layer.values) == ["trunk.0", "trunk.2", "all"]
    for name, v in ds.variables.items():
        assert v.attrs.get("long_name") and v.attrs.get("units"), name
    assert json.loads(ds.attrs["shared_parameters"])[0] == "trunk.0.weight"
    for k in ("gradcomp_version", "torch_version", "strategy", "schedule"):
        assert isinstance(ds.attrs[k], str) and ds.attrs[k]
    back = xr.open_dataset(tmp_path / "r.nc", engine="h5netcdf").load()
    # the file was built at exit, ds afterwards: the same but for the time stamp in history
    xr.testing.assert_identical(back, ds.assign_attrs(history=back.attrs["history"]))
    # units of the "all" layer are NaN; trunk.2 has 4 units of 5 (padded with NaN)
    assert np.isnan(ds.unit_gram.sel(layer="all")).all()
    assert np.isnan(ds.unit_gram.sel(layer="trunk.2", unit=4)).all()
    np.testing.assert_allclose(
        ds.unit_gram.sel(layer="trunk.0").sum("unit"), ds.gram.sel(layer="trunk.0"), rtol=1e-12
    )


def test_flush_every_writes_while_training_and_on_exit_after_an_error(tmp_path: Path) -> None:
    m = _model()
    path = tmp_path / "sub" / "run.nc"
    with pytest.raises(KeyboardInterrupt):
        with gradcomp.record(m, TASKS, path=path, flush_every=2) as rec:
            for step in range(5):
                losses, _ = _losses(m)
                rec.backward(losses)
                if step == 2:  # a crash here (process killed) would keep the flushed steps
                    on_disk = xr.open_dataset(path, engine="h5netcdf").load()
                    assert on_disk.step.values.tolist() == [0, 1]
                    raise KeyboardInterrupt
    on_disk = xr.open_dataset(path, engine="h5netcdf").load()
    assert on_disk.step.values.tolist() == [0, 1, 2]  # flushed on exit despite the exception
    rec.flush(tmp_path / "all.nc")
    assert xr.open_dataset(tmp_path / "all.nc", engine="h5netcdf").sizes["step"] == 3


def _three(m: nn.Module) -> dict[str, Tensor]:
    h = m["trunk"](X)
    rows = {"a": slice(0, 3), "b": slice(3, 6), "c": slice(6, 8)}
    return {t: m["heads"][t](h[r]).pow(2).mean() for t, r in rows.items()}


THREE_ROWS = {"a": slice(0, 3), "b": slice(3, 6), "c": slice(6, 8)}


@pytest.mark.parametrize("strategy", ["rows", "auto"])
def test_hooks_are_removed_after_the_block_also_on_error(strategy: str) -> None:
    m = _model()
    m["heads"]["c"] = nn.Linear(4, 1).double()
    before = _hooks(m)
    with gradcomp.record(m, ["a", "b", "c"], strategy=strategy) as rec:
        for _ in range(2):
            rec.backward(_three(m), rows=THREE_ROWS)
        assert _hooks(m) > before
    assert _hooks(m) == before
    with pytest.raises(RuntimeError, match="boom"):
        with gradcomp.record(m, ["a", "b", "c"], strategy=strategy) as rec:
            for _ in range(2):
                rec.backward(_three(m), rows=THREE_ROWS)
            raise RuntimeError("boom")
    assert _hooks(m) == before
    assert json.loads(rec.to_dataset().attrs["config"])["strategies_used"][-1] == "rows"


def test_bad_input_is_named() -> None:
    m = _model()
    with gradcomp.record(m, TASKS) as rec:
        losses, h = _losses(m)
        with pytest.raises(ValueError, match=r"unknown task\(s\) \['c'\]"):
            rec.backward({**losses, "c": losses["a"]})
        with pytest.raises(ValueError, match=r"none for \['b'\]"):
            rec.backward({"a": losses["a"]})
        with pytest.raises(ValueError, match="'a' must be a scalar"):
            rec.backward({"a": h.sum(0), "b": losses["b"]})
        with pytest.raises(ValueError, match="does not require grad"):
            rec.backward({"a": torch.tensor(1.0), "b": losses["b"]})
    with pytest.raises(RuntimeError, match="outside"):
        rec.backward(losses)
    with gradcomp.record(m, TASKS, shared=m["trunk"][2]) as rec:
        head_only = {"a": losses["a"], "b": m["heads"]["b"](X.new_ones(1, 4)).sum()}
        with pytest.raises(ValueError, match="task 'b' reaches no shared parameter"):
            rec.backward(head_only)
    with gradcomp.record(m, TASKS) as rec:
        separate = {t: m["heads"][t](X.new_ones(1, 4)).sum() for t in TASKS}
        with pytest.raises(ValueError, match="no shared parameters"):
            rec.backward(separate)
    with pytest.raises(ValueError, match="no shared parameters"):
        gradcomp.record(m, TASKS, shared=[])
    with pytest.raises(ValueError, match="unknown parameter"):
        gradcomp.record(m, TASKS, shared="trunk.9.weight")
    with pytest.raises(ValueError, match="strategy must be"):
        gradcomp.record(m, TASKS, strategy="fast")
    with pytest.raises(ValueError, match="listed twice"):
        gradcomp.record(m, ["a", "a"])
    with pytest.raises(ValueError, match="flush_every"):
        gradcomp.record(m, TASKS, flush_every=3)
    with gradcomp.record(m, TASKS, strategy="rows") as rec:
        losses, h = _losses(m)
        with pytest.raises(ValueError, match="needs backward\\(losses, rows="):
            rec.backward(losses)
        with pytest.raises(ValueError, match="disjoint"):
            rec.backward(losses, rows={"a": slice(0, 5), "b": slice(4, 8)})
    with gradcomp.record(m, TASKS, strategy="features") as rec:
        with pytest.raises(ValueError, match="features="):
            rec.backward(_losses(m)[0])
    with pytest.raises(ValueError, match="nothing recorded"):
        gradcomp.record(m, TASKS).to_dataset()


def test_nonfinite_loss_is_nan_with_a_warning_and_others_are_intact() -> None:
    m = _model()
    for strategy in ["loop", "batched", "rows"]:
        with gradcomp.record(m, ["a", "b", "c"], strategy=strategy) as rec:
            h = m["trunk"](X)
            losses = {
                "a": m["heads"]["a"](h[:3]).pow(2).mean(),
                "b": m["heads"]["b"](h[3:6]).pow(2).mean(),
                "c": torch.log(-h[6:, 0].sum().abs() - 1.0),  # NaN
            }
            names = [n for n, _ in m.named_parameters() if n.startswith("trunk")]
            params = dict(m.named_parameters())
            grads = per_task_gradients([losses["a"], losses["b"]], [params[n] for n in names])
            rows = {"a": slice(0, 3), "b": slice(3, 6), "c": slice(6, 8)}
            with pytest.warns(NonfiniteLossWarning, match=r"\['c'\]"):
                rec.backward(losses, rows=rows)
        g = rec.to_dataset().gram.isel(step=0).sel(layer="all")
        assert np.isnan(g.sel(task="c")).all() and np.isnan(g.sel(task_j="c")).all()
        np.testing.assert_allclose(
            g.sel(task=["a", "b"], task_j=["a", "b"]).values, gram_reference(grads), 1e-10, 1e-12
        )
        assert np.isnan(rec.to_dataset().loss.sel(task="c")).all()


def test_nonfinite_raise_leaves_grads_untouched() -> None:
    m = _model()
    with gradcomp.record(m, TASKS, on_nonfinite="raise") as rec:
        losses, _ = _losses(m)
        m.zero_grad(set_to_none=True)
        with pytest.raises(ValueError, match="non-finite loss for task"):
            rec.backward({"a": losses["a"] * float("inf"), "b": losses["b"]})
    assert all(p.grad is None for p in m.parameters())


@pytest.mark.parametrize("strategy", ["loop", "batched", "features", "rows"])
def test_reduce_applies_to_stacks_and_rows_switches(strategy: str) -> None:
    seen: list[tuple[int, ...]] = []

    def double(g: Tensor) -> Tensor:
        seen.append(tuple(g.shape))
        return 2 * g

    m, m2 = _model(), _model()
    with gradcomp.record(m, TASKS, strategy=strategy, reduce=double) as rec:
        losses, h = _losses(m)
        rec.backward(losses, features=h, rows=ROWS)
    with gradcomp.record(m2, TASKS, strategy="loop") as rec2:
        losses, _ = _losses(m2)
        rec2.backward(losses)
    for p, q in zip(m.parameters(), m2.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)  # .grad never sees reduce
    np.testing.assert_allclose(rec.to_dataset().gram, 4 * rec2.to_dataset().gram, rtol=1e-12)
    assert seen[0] == (2, 5, 3)
    used = json.loads(rec.to_dataset().attrs["config"])["strategies_used"]
    # "rows" never materialises per-task gradients: with reduce it takes "features" (given here)
    assert used == ["features" if strategy == "rows" else strategy]
    if strategy == "rows":
        with gradcomp.record(m, TASKS, strategy="rows", reduce=double) as rec:
            rec.backward(_losses(m)[0], rows=ROWS)
        assert json.loads(rec.to_dataset().attrs["config"])["strategies_used"] == ["batched"]


def test_store_full_keeps_per_task_gradients() -> None:
    m = _model()
    with gradcomp.record(m, TASKS, store="full", shared=m["trunk"]) as rec:
        losses, _ = _losses(m)
        params = [p for n, p in m.named_parameters() if n.startswith("trunk")]
        grads = per_task_gradients(list(losses.values()), params)
        rec.backward(losses)
    ds = rec.to_dataset()
    want = np.stack([torch.cat([g.reshape(-1) for g in gt]).numpy() for gt in grads])
    np.testing.assert_allclose(ds.grad.isel(step=0).values, want, rtol=1e-12)
    assert json.loads(ds.attrs["param_shapes"])[0] == [5, 3]
    with gradcomp.record(m, TASKS, store="full", strategy="rows") as rec:
        losses, _ = _losses(m)
        grads = per_task_gradients(list(losses.values()), params)
        rec.backward(losses, rows=ROWS)
    ds = rec.to_dataset()  # "rows" keeps no whole per-task gradient: it took "batched"
    assert json.loads(ds.attrs["config"])["strategies_used"] == ["batched"]
    want = np.stack([torch.cat([g.reshape(-1) for g in gt]).numpy() for gt in grads])
    np.testing.assert_allclose(ds.grad.isel(step=0).values, want, rtol=1e-12)


def test_shared_specs_and_layer_groupings() -> None:
    m = _model()
    specs = [m["trunk"], [m["trunk"][0], "trunk.2.weight"], "trunk.2.bias"]
    expected = [4, 3, 1]
    for spec, n in zip(specs, expected, strict=True):
        rec = gradcomp.record(m, TASKS, shared=spec)
        assert rec.layout is not None and len(rec.layout.names) == n
    with gradcomp.record(m, TASKS, layers="param") as rec:
        rec.backward(_losses(m)[0])
    assert list(rec.to_dataset().layer.values) == [
        "trunk.0.weight", "trunk.0.bias", "trunk.2.weight", "trunk.2.bias", "all"
    ]  # fmt: skip
    grouping = {"first": ["trunk.0.weight", "trunk.0.bias"], "w2": ["trunk.2.weight"]}
    with gradcomp.record(m, TASKS, layers=grouping) as rec:
        rec.backward(_losses(m)[0])
    ds = rec.to_dataset()
    assert list(ds.layer.values) == ["first", "w2", "all"]
    with pytest.raises(ValueError, match="reserved"):
        gradcomp.record(m, TASKS, layers={"all": ["trunk.0.weight"]}, shared=m["trunk"])


def test_statistics_accumulate_in_float32_for_low_precision() -> None:
    stack = torch.randn(3, 4, 5).to(torch.bfloat16)
    m = nn.Linear(5, 4)
    from gradcomp.recorder.shared import make_layout

    layout = make_layout(nn.ModuleDict({"l": m}), ["l.weight"], "module")
    stats = from_stacks([stack], layout, units=True)
    assert stats.gram.dtype == torch.float32
    assert stats.units is not None and stats.units[0] is not None
    assert stats.units[0].dtype == torch.float32
    ref = stack.float().reshape(3, -1) @ stack.float().reshape(3, -1).T
    torch.testing.assert_close(stats.gram[0], ref)


@pytest.mark.parametrize("strategy", ["loop", "batched", "features", "rows"])
def test_bf16_autocast_matches_float32_reference(strategy: str) -> None:
    torch.manual_seed(0)
    m = _model().float()
    x = X.float()
    with gradcomp.record(m, TASKS, strategy=strategy) as rec:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = m["trunk"](x)
            losses = {t: m["heads"][t](h[ROWS[t]]).float().pow(2).mean() for t in TASKS}
        params = [p for n, p in m.named_parameters() if n.startswith("trunk")]
        grads = per_task_gradients(list(losses.values()), params)
        rec.backward(losses, features=h, rows=ROWS)
    got = rec.to_dataset().gram.isel(step=0).sel(layer="all").values
    np.testing.assert_allclose(got, gram_reference(grads), rtol=2e-2, atol=1e-4)
    plain = _model().float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = plain["trunk"](x)
        lp = {t: plain["heads"][t](h[ROWS[t]]).float().pow(2).mean() for t in TASKS}
    (lp["a"] + lp["b"]).backward()
    for p, q in zip(m.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=2e-2, atol=1e-3)


@pytest.mark.parametrize("strategy", ["loop", "batched", "features"])
def test_ddp_path_runs_a_real_backward(strategy: str, tmp_path: Path) -> None:
    """Under DistributedDataParallel the training gradient comes from ``backward()`` (DDP's sync
    hooks fire); a single-process gloo group checks it end to end."""
    import torch.distributed as dist

    if not dist.is_available() or dist.is_initialized():
        pytest.skip("torch.distributed unavailable or already initialised")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        inner, plain = _model(), _model()
        ddp = nn.parallel.DistributedDataParallel(inner)
        with gradcomp.record(ddp, TASKS, strategy=strategy) as rec:
            assert rec._ddp
            h = ddp.module["trunk"](X)
            losses = {t: ddp.module["heads"][t](h[ROWS[t]]).pow(2).mean() for t in TASKS}
            names = [n for n, _ in ddp.named_parameters() if ".trunk." in n]
            params = dict(ddp.named_parameters())
            grads = per_task_gradients(list(losses.values()), [params[n] for n in names])
            rec.backward(losses, features=h)
        lp, _ = _losses(plain)
        (lp["a"] + lp["b"]).backward()
        for p, q in zip(inner.parameters(), plain.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-14)
        got = rec.to_dataset().gram.isel(step=0).sel(layer="all").values
        np.testing.assert_allclose(got, gram_reference(grads), rtol=1e-10, atol=1e-12)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("strategy", ["loop", "batched", "features", "rows"])
def test_leaves_outside_the_model_get_their_gradient(strategy: str) -> None:
    """E.g. learned loss weights (uncertainty weighting) kept outside the model."""
    m, plain = _model(), _model()
    s_rec = torch.tensor([0.1, -0.2], dtype=torch.float64, requires_grad=True)
    s_plain = s_rec.detach().clone().requires_grad_(True)
    with gradcomp.record(m, TASKS, strategy=strategy) as rec:
        for _ in range(2):
            losses, h = _losses(m)
            losses = {t: v * torch.exp(s_rec[i]) for i, (t, v) in enumerate(losses.items())}
            rec.backward(losses, features=h, rows=ROWS)
            lp, _ = _losses(plain)
            (lp["a"] * torch.exp(s_plain[0]) + lp["b"] * torch.exp(s_plain[1])).backward()
    torch.testing.assert_close(s_rec.grad, s_plain.grad, rtol=1e-12, atol=1e-14)
    for p, q in zip(m.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-14)


@pytest.mark.gpu
@pytest.mark.parametrize("strategy", ["loop", "batched", "features", "rows", "auto"])
def test_cuda_bf16_autocast_matches_reference(strategy: str) -> None:
    """On CUDA under bf16 autocast, statistics are float32 and match the float32 reference."""
    torch.manual_seed(0)
    tasks = ["a", "b", "c", "d"]
    m = nn.ModuleDict(
        {
            "trunk": nn.Sequential(nn.Linear(3, 32), nn.Tanh(), nn.Linear(32, 16)),
            "heads": nn.ModuleDict({t: nn.Linear(16, 1) for t in tasks}),
        }
    ).cuda()
    x = torch.randn(16, 3, device="cuda")
    rows = {t: slice(4 * i, 4 * i + 4) for i, t in enumerate(tasks)}
    with gradcomp.record(m, tasks, strategy=strategy) as rec:
        for _ in range(2):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                h = m["trunk"](x)
                losses = {t: m["heads"][t](h[r]).float().pow(2).mean() for t, r in rows.items()}
            params = [p for n, p in m.named_parameters() if n.startswith("trunk")]
            grads = per_task_gradients(list(losses.values()), params)
            m.zero_grad()
            rec.backward(losses, features=h, rows=rows)
    got = rec.to_dataset().gram.isel(step=-1).sel(layer="all").values
    np.testing.assert_allclose(got, gram_reference(grads), rtol=2e-2, atol=1e-4)
    if strategy == "auto":
        used = json.loads(rec.to_dataset().attrs["config"])["strategies_used"]
        assert used == ["features", "rows"]


def test_importing_the_recorder_pulls_in_neither_dask_nor_transformers() -> None:
    import subprocess
    import sys

    code = (
        "import sys, gradcomp; gradcomp.record; import gradcomp.recorder, gradcomp.reference; "
        "bad = [m for m in ('dask', 'distributed', 'transformers', 'peft') if m in sys.modules]; "
        "sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_stats_memory_does_not_grow_with_parameter_count() -> None:
    """store="stats" keeps steps × layers × T² numbers, whatever the layer widths."""
    sizes = []
    for width in (4, 64):
        torch.manual_seed(0)
        m = nn.ModuleDict(
            {
                "trunk": nn.Sequential(nn.Linear(3, width), nn.Tanh(), nn.Linear(width, 4)),
                "heads": nn.ModuleDict({t: nn.Linear(4, 1) for t in TASKS}),
            }
        )
        with gradcomp.record(m, TASKS) as rec:
            for _ in range(3):
                h = m["trunk"](X.float())
                rec.backward({t: m["heads"][t](h[ROWS[t]]).pow(2).mean() for t in TASKS})
        sizes.append(rec.to_dataset().drop_vars(["task", "task_j", "layer"]).nbytes)
    assert sizes[0] == sizes[1]
