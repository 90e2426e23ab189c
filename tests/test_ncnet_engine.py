"""NCnet's one ``engine`` knob, its plan, the C kernel's checked argument struct, public imports."""

from __future__ import annotations

import ctypes
import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from gradcomp import ncnet
from gradcomp.ncnet import NCnetConfig, plan, run
from gradcomp.ncnet import _compiled as compiled
from gradcomp.ncnet._run import train
from gradcomp.reference.ncnet import train_ncnet

needs_cc = pytest.mark.skipif(not compiled.available(), reason="no C compiler for engine='c'")
ROOT = Path(__file__).resolve().parents[1]
CFG = NCnetConfig(steps=25, trace_every=5, dtype="float64", units=True)


# --- the knob ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "old", [{"method": "loop"}, {"backend": "c"}, {"method": "fast", "backend": "torch"}]
)
def test_removed_keywords_name_engine(old: dict) -> None:
    with pytest.raises(TypeError, match=r"engine="):
        run(CFG, [1], 2, progress=False, **old)
    with pytest.raises(TypeError, match=r"engine="):
        ncnet.capacity(CFG, [1], 2, progress=False, **old)
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) colour="):
        run(CFG, [1], 2, progress=False, colour="red")


def test_unknown_engine_is_refused_before_work() -> None:
    with pytest.raises(ValueError, match=r"engine must be one of \('auto', 'c', 'torch'"):
        run(CFG, [1], 2, progress=False, engine="fast")
    with pytest.raises(ValueError, match="engine must be one of"):
        train(plan(CFG, [1], [0, 1]), "auto")


@pytest.mark.parametrize("engine", ["vmap", "loop"])
def test_autograd_engines_equal_the_independent_reference(engine: str) -> None:
    """The plan-fed vmap/loop engines against ``train_ncnet`` (its own construction of the
    data and parameters from the documented protocol), float64 to 1e-10."""
    widths, seeds = [1, 3], [0, 5, 9]
    got = train(plan(CFG, widths, seeds), engine)
    ref = train_ncnet(CFG, widths, seeds)
    assert set(got) == set(ref)
    for name in ref:
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("engine", ["torch", "vmap", "loop", pytest.param("c", marks=needs_cc)])
def test_every_engine_through_run_matches_the_loop(engine: str) -> None:
    ds = run(CFG, [1, 2], 4, chunk=3, progress=False, engine=engine)
    ref = train_ncnet(CFG, [1, 2], list(range(4)))
    assert ds.attrs["engine"] == engine and "backend" not in ds.attrs
    last = ds.isel(step=-1)
    a = ref["outcome"][-1, ..., 0].reshape(2, 2, 2, 4)  # (width, alice, bob, seed)
    np.testing.assert_array_equal(last.a.transpose("width", "alice", "bob", "seed").values, a)
    loss = ref["loss"].reshape(ref["loss"].shape[0], 2, 2, 2, 4, 2)  # (T, width, a, b, seed, t)
    got = ds.loss.transpose("step", "width", "alice", "bob", "seed", "task").values
    np.testing.assert_allclose(got, loss, rtol=1e-10, atol=1e-14)


def test_auto_is_c_on_the_cpu_when_the_kernel_loads_else_torch() -> None:
    want = "c" if compiled.available() and compiled.try_load(torch.float64) is None else "torch"
    assert ncnet.resolve_engine("auto", "cpu", torch.float64) == want
    assert ncnet.resolve_engine("auto", "meta", torch.float64) == "torch"
    for engine in ("c", "torch", "vmap", "loop"):
        assert ncnet.resolve_engine(engine, "cpu") == engine


# --- the plan ---------------------------------------------------------------------------------


def test_plan_is_frozen_and_read_only() -> None:
    p = plan(CFG, [1, 2], [3, 4, 5])
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.widths = (3,)  # type: ignore[misc]
    arrays = [p.patterns, p.targets, p.weights, p.train, p.held, *p.head_masks]
    arrays += [a for per in p.inits for a in per.values()]
    for a in arrays:
        assert not a.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            a[...] = 0


def test_plan_select_equals_the_plan_of_the_chunk() -> None:
    full, part = plan(CFG, [1, 3], range(7)), plan(CFG, [1, 3], [2, 3, 4])
    sub = full.select(slice(2, 5))
    assert sub.seeds == part.seeds == (2, 3, 4)
    for x, y in zip(sub.inits, part.inits, strict=True):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    np.testing.assert_array_equal(sub.targets, part.targets)


def test_plan_holds_the_model_data() -> None:
    """Targets of setting pair (a, b) are Alice's task a and Bob's task b; unshared doubles m."""
    cfg = dataclasses.replace(CFG, unshared=True, holdout=2)
    p = plan(cfg, [2], [0])
    t = cfg.targets()
    for s, (a, b) in enumerate(ncnet._plan.SETTING_PAIRS):
        np.testing.assert_array_equal(p.targets[s], np.stack([t[0, a - 1], t[1, b - 1]]))
    assert p.units == (4,) and p.head_masks[0].shape == (2, 4)
    assert (
        p.held.sum() == 2 and np.isclose(p.weights.sum(), 1) and (p.weights[p.held > 0] == 0).all()
    )


# --- the C kernel's argument struct -----------------------------------------------------------


@needs_cc
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_layout_of_the_struct_matches_c(dtype: torch.dtype) -> None:
    kernel = compiled.load(dtype)
    names = [n for n, _ in compiled.ARGS_FIELDS]
    assert [n for n, _ in kernel.args._fields_] == names  # type: ignore[attr-defined]
    compiled.check_layout(kernel.lib, kernel.args)  # no error


def _fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compiled, "_LOADED", {})
    monkeypatch.setattr(compiled, "_FAILED", {})


@needs_cc
@pytest.mark.parametrize(
    "change",
    ["swap", "drop", "retype"],
)
def test_a_struct_mismatch_is_refused_before_any_call(
    monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    fields = list(compiled.ARGS_FIELDS)
    if change == "swap":  # same size, other order
        i, j = [n for n, _ in fields].index("k"), [n for n, _ in fields].index("P")
        fields[i], fields[j] = fields[j], fields[i]
    elif change == "drop":
        fields = [f for f in fields if f[0] != "act"]
    else:  # K as a 32-bit int: every later offset moves
        fields = [(n, ctypes.c_int if n == "K" else t) for n, t in fields]
    _fresh(monkeypatch)
    monkeypatch.setattr(compiled, "ARGS_FIELDS", tuple(fields))
    with pytest.raises(compiled.KernelLayoutError, match="struct ncnet_args does not match"):
        compiled.load(torch.float64)
    with pytest.raises(compiled.KernelLayoutError):
        run(CFG, [1], 2, progress=False, engine="c")
    _fresh(monkeypatch)
    with pytest.warns(compiled.CKernelUnavailableWarning, match="does not match"):
        ds = run(CFG, [1], 2, progress=False, engine="auto")
    assert ds.attrs["engine"] == "torch"


@needs_cc
def test_the_kernel_refuses_a_struct_of_another_size() -> None:
    """The C side checks ``size`` too: a caller with another struct gets -2, nothing written."""
    kernel = compiled.load(torch.float64)
    W = torch.zeros(1, 3, 64, dtype=torch.float64)
    before = W.clone()
    fields = {n: 0 for n, _ in compiled.ARGS_FIELDS if n != "size"}
    args = kernel.args(**{**fields, "W": W.data_ptr(), "K": 16, "G": 1, "steps": 1})
    args.size = ctypes.sizeof(kernel.args) + 8
    assert kernel.lib.ncnet_train(ctypes.byref(args)) == -2
    assert torch.equal(W, before)
    with pytest.raises(TypeError, match="missing"):
        kernel(W=W.data_ptr())


# --- public imports and one code path ---------------------------------------------------------

PRIVATE_NCNET = re.compile(r"from gradcomp\.ncnet\._|gradcomp\.ncnet\._\w+ import|ncnet\._\w+\.")


@pytest.mark.parametrize("folder", ["analyses", "figures", "benchmarks", "gradcomp/commands"])
def test_scripts_and_commands_use_public_ncnet_names(folder: str) -> None:
    bad = [
        f"{path.relative_to(ROOT)}:{i}"
        for path in sorted((ROOT / folder).glob("*.py"))
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if PRIVATE_NCNET.search(line) or re.search(r"gradcomp\._encoding", line)
    ]
    assert not bad, bad


def test_capacity_run_is_capacity_and_its_table() -> None:
    cfg = NCnetConfig(steps=20)
    result = ncnet.capacity_run(cfg, [1, 2], 4, n_boot=20, progress=False, engine="torch")
    ds = ncnet.capacity(cfg, [1, 2], 4, n_boot=20, progress=False, engine="torch")
    assert result.table == ncnet.table(ds)
    for v in ds.data_vars:
        np.testing.assert_array_equal(result.dataset[v].values, ds[v].values, err_msg=str(v))
    vals = result.values()
    np.testing.assert_array_equal(vals["shared"]["S"], ds.S.isel(step=-1).values)
    assert set(vals) == {"widths", "step", "shared", "unshared"}


def test_sweep_experiment_takes_a_pinned_engine() -> None:
    from gradcomp.commands.sweep import make_experiment
    from gradcomp.scaleout import NCnetExperiment

    with pytest.raises(TypeError, match="engine="):
        NCnetExperiment(CFG, backend="c")  # type: ignore[call-arg]
    exp = NCnetExperiment(CFG, engine="auto")
    with pytest.raises(ValueError, match=r"engine must be one of .* \(pinned\)"):
        exp({"width": 1}, range(2))
    with pytest.raises(ValueError, match="backend= is now --set engine="):
        make_experiment("ncnet", {"backend": "c"})
    assert make_experiment("ncnet", {"engine": "loop"}).engine == "loop"
    assert dataclasses.replace(NCnetExperiment(CFG), engine="c").engine == "c"


def test_cli_backend_points_to_engine(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from gradcomp.cli import main

    out = tmp_path / "x.nc"
    assert main(["ncnet", "--backend", "c", "--widths", "1", "--out", str(out)]) == 2
    assert "--backend is now --engine (--engine c)" in capsys.readouterr().err
    assert not out.exists()
