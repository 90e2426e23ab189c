"""``"rows"`` through the C++ Linear and LayerNorm (:mod:`gradcomp.recorder.rows.native`): every
recorded step equals the naive per-task gradients (a loop of ``autograd.grad``, float64), the
training gradient equals a plain backward's, and the C++ path is really taken from the second
step on (the first goes through the Python functions)."""

from __future__ import annotations

import copy
import platform
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import gradcomp
from gradcomp.recorder.core import Recorder
from gradcomp.recorder.rows import RowsHooks, native
from gradcomp.reference import gram_reference, per_task_gradients

TASKS = ["a", "b", "c", "d"]
buildable = pytest.mark.skipif(
    platform.system() == "Windows" or shutil.which("c++") is None, reason="no C++ compiler"
)


class Trunk(nn.Module):
    """Linear layers narrow, wide and without bias, two LayerNorms; ``twice`` calls one Linear
    and one LayerNorm a second time in the same forward."""

    def __init__(self, twice: bool = False) -> None:
        super().__init__()
        self.up = nn.Linear(5, 9)  # out > in: the blocks are formed transposed
        self.norm = nn.LayerNorm(9)
        self.down = nn.Linear(9, 6, bias=False)
        self.mix = nn.Linear(6, 6)
        self.last = nn.LayerNorm(6)
        self.twice = twice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mix(torch.tanh(self.down(torch.tanh(self.norm(self.up(x))))))
        if self.twice:
            h = h + self.mix(torch.sin(self.last(h)))
        return self.last(h)


def _model(dtype: torch.dtype, twice: bool = False) -> nn.ModuleDict:
    torch.manual_seed(7)
    heads = nn.ModuleDict({t: nn.Linear(6, 1) for t in TASKS})
    return nn.ModuleDict({"trunk": Trunk(twice), "heads": heads}).to(dtype)


def _losses(m: nn.ModuleDict, x: torch.Tensor, rows: dict) -> dict[str, torch.Tensor]:
    h = m["trunk"](x)
    return {t: m["heads"][t](h[r]).pow(2).mean() for t, r in rows.items()}


def _hooks(rec: Recorder) -> RowsHooks:  # the installed rows hooks
    return rec._choice.instance("rows").hooks


def _even(per: int) -> dict[str, slice]:
    return {t: slice(per * i, per * (i + 1)) for i, t in enumerate(TASKS)}


def _unit_reference(grads: list[list[torch.Tensor]], w: int) -> np.ndarray:
    """Per output row u of a Linear weight: ``Σ_i g_t[u, i] g_s[u, i]``, a loop over units."""
    n_units, n = grads[0][w].shape[0], len(grads)
    out = np.zeros((n_units, n, n))
    for u in range(n_units):
        for t in range(n):
            for s in range(n):
                out[u, t, s] = float(grads[t][w][u] @ grads[s][w][u])
    return out


def _check_against_reference(
    dtype: torch.dtype,
    *,
    twice: bool = False,
    units: bool = False,
    weights: bool = False,
    batch: int = 12,
    steps: int = 3,
) -> list[int]:
    """Record ``steps`` steps and compare each with the naive per-task gradients; returns how
    many modules took the C++ path at each step."""
    m = _model(dtype, twice)
    plain = copy.deepcopy(m)
    rows = _even(3)  # tasks own rows 0-11; with batch > 12 the rest belong to no task
    tasks = {t: 0.5 + i for i, t in enumerate(TASKS)} if weights else TASKS
    scale = tasks if weights else dict.fromkeys(TASKS, 1.0)
    names = [n for n, _ in m["trunk"].named_parameters()]
    native_calls = []
    with gradcomp.record(
        m, tasks, strategy="rows", shared=m["trunk"], units=units, layers="param"
    ) as rec:
        for step in range(steps):
            torch.manual_seed(100 + step)
            x = torch.randn(batch, 4, 5, dtype=dtype)
            losses = _losses(m, x, rows)
            grads = per_task_gradients(list(losses.values()), list(m["trunk"].parameters()))
            m.zero_grad()
            rec.backward(losses, rows=rows)
            native_calls.append(_hooks(rec)._n_native)
            got = rec.to_dataset().isel(step=step)
            for k, name in enumerate(names):
                np.testing.assert_allclose(
                    got.gram.sel(layer=f"trunk.{name}").values, gram_reference(grads, [k]),
                    rtol=1e-10, atol=1e-13, err_msg=f"step {step}, {name}",
                )  # fmt: skip
            if units:
                for w, name in ((0, "up.weight"), (5, "mix.weight")):
                    n_units = m["trunk"].get_parameter(name).shape[0]
                    want = _unit_reference(grads, w)
                    ug = got.unit_gram.sel(layer=f"trunk.{name}").values[:n_units]
                    np.testing.assert_allclose(ug, want, rtol=1e-10, atol=1e-13)
            # the training gradient is a plain backward's
            plain.zero_grad()
            lp = _losses(plain, x, rows)
            sum(scale[t] * lp[t] for t in TASKS).backward()
            for (n, p), q in zip(m.named_parameters(), plain.parameters(), strict=True):
                torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-14, msg=n)
    return native_calls


@buildable
def test_the_extension_builds_here() -> None:
    """On a machine with a C++ compiler the C++ path is available (else the tests below would
    only exercise the Python functions)."""
    assert native.ops() is not None, native.status()
    assert native.status() == "loaded"


@buildable
@pytest.mark.parametrize(
    "case",
    [
        {},
        {"weights": True},
        {"units": True},
        {"twice": True},
        {"batch": 14},  # two batch rows belong to no task: .grad is not the sum of the blocks
    ],
    ids=lambda c: ",".join(c) or "plain",
)
def test_native_steps_equal_reference_float64(case: dict) -> None:
    calls = _check_against_reference(torch.float64, **case)
    assert calls[0] == 0  # the first step checks rows= through the Python functions
    assert calls[1:] == [5, 5]  # up, norm, down, mix, last


@buildable
def test_native_and_python_paths_agree_in_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    """float32, blocks large enough for the compiled Gram kernel (T² · P ≥ 2¹⁸): the two paths
    agree within float32 rounding."""
    results = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("GRADCOMP_ROWS_NATIVE", flag)
        torch.manual_seed(0)
        trunk = nn.Sequential(nn.Linear(64, 128), nn.LayerNorm(128), nn.Linear(128, 64))
        heads = nn.ModuleDict({t: nn.Linear(64, 1) for t in TASKS})
        m = nn.ModuleDict({"trunk": trunk, "heads": heads})
        rows = _even(4)
        with gradcomp.record(m, TASKS, strategy="rows", shared=trunk) as rec:
            for step in range(3):
                torch.manual_seed(step)
                x = torch.randn(16, 8, 64)
                m.zero_grad()
                rec.backward(_losses(m, x, rows), rows=rows)
            used = _hooks(rec)._n_native
        results[flag] = (rec.to_dataset().gram.values, used)
    np.testing.assert_allclose(results["1"][0], results["0"][0], rtol=2e-5, atol=1e-7)
    assert results["1"][1] == 3 and results["0"][1] == 0


@buildable
def test_rows_that_change_after_the_forward_take_the_fallback() -> None:
    """The forward predicts the tasks' rows from the step before; when ``rows=`` then differs
    (other rows per task, uneven rows, another batch size) the C++ calls give plain gradients
    and the statistics still equal the reference."""
    m = _model(torch.float64)
    plans = [(12, _even(3)), (12, _even(3)), (12, _even(2)), (12, _uneven()), (8, _even(2))]
    with gradcomp.record(m, TASKS, strategy="rows", shared=m["trunk"]) as rec:
        for step, (batch, rows) in enumerate(plans):
            torch.manual_seed(step)
            x = torch.randn(batch, 4, 5, dtype=torch.float64)
            losses = _losses(m, x, rows)
            grads = per_task_gradients(list(losses.values()), list(m["trunk"].parameters()))
            m.zero_grad()
            rec.backward(losses, rows=rows)
            got = rec.to_dataset().gram.isel(step=step).sel(layer="all").values
            np.testing.assert_allclose(got, gram_reference(grads), rtol=1e-10, atol=1e-13)


def _uneven() -> dict[str, list[int]]:
    return {"a": [0, 5], "b": [1, 2, 3], "c": [4, 11, 6], "d": [7, 8, 9, 10]}


@buildable
def test_observe_through_the_native_path_leaves_grad_and_equals_backward() -> None:
    m = _model(torch.float64)
    rows = _even(3)
    with gradcomp.record(m, TASKS, strategy="rows", shared=m["trunk"], every=1) as rec:
        x = torch.randn(12, 4, 5, dtype=torch.float64)
        for step in range(2):
            m.zero_grad()
            rec.backward(_losses(m, x, rows), rows=rows, step=step)
        m.zero_grad()
        losses = _losses(m, x, rows)
        rec.observe(losses, rows=rows, step=2)
        assert _hooks(rec)._n_native == 5
        assert all(p.grad is None for p in m.parameters())
        sum(losses.values()).backward()  # the kept graph: plain gradients, nothing recorded
        rec.backward(_losses(m, x, rows), rows=rows, step=3)
    g = rec.to_dataset().gram
    np.testing.assert_allclose(g.isel(step=2).values, g.isel(step=1).values, rtol=1e-12)
    np.testing.assert_allclose(g.isel(step=3).values, g.isel(step=1).values, rtol=1e-12)


@buildable
def test_frozen_parameters_and_the_switch_take_the_python_functions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    m = _model(torch.float64)
    m["trunk"].mix.bias.requires_grad_(False)
    rows = _even(3)
    with gradcomp.record(m, TASKS, strategy="rows", shared=m["trunk"]) as rec:
        for _ in range(2):
            m.zero_grad()
            rec.backward(_losses(m, torch.randn(12, 4, 5, dtype=torch.float64), rows), rows=rows)
        assert _hooks(rec)._n_native == 4  # all but mix
        monkeypatch.setenv("GRADCOMP_ROWS_NATIVE", "0")
        m.zero_grad()
        rec.backward(_losses(m, torch.randn(12, 4, 5, dtype=torch.float64), rows), rows=rows)
        assert _hooks(rec)._n_native == 0
    assert native.status() == "off"


def test_a_failed_build_leaves_the_python_functions(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A source that does not compile (as a missing compiler or ninja would): ``ops()`` is
    ``None``, ``status()`` carries the error, and ``rows`` records the same statistics through
    its Python functions."""
    broken = tmp_path / "_native.cpp"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(native, "SOURCES", [broken, native.SOURCES[1]])
    monkeypatch.setattr(native, "_OPS", [])
    monkeypatch.setenv("GRADCOMP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("GRADCOMP_ROWS_NATIVE", raising=False)
    assert native.ops() is None
    assert native.status() not in ("loaded", "off", "not tried")
    assert native.ops() is None  # tried once per process
    calls = _check_against_reference(torch.float64)
    assert calls == [0, 0, 0]


@pytest.mark.gpu
@buildable
def test_native_and_python_paths_agree_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU the C++ functions run the same aten operations (the Gram by cuBLAS): float64
    statistics equal the Python functions'."""
    results = []
    for flag in ("1", "0"):
        monkeypatch.setenv("GRADCOMP_ROWS_NATIVE", flag)
        m = _model(torch.float64).cuda()
        rows = _even(3)
        with gradcomp.record(m, TASKS, strategy="rows", shared=m["trunk"]) as rec:
            for step in range(3):
                torch.manual_seed(step)
                x = torch.randn(12, 4, 5, dtype=torch.float64, device="cuda")
                m.zero_grad()
                rec.backward(_losses(m, x, rows), rows=rows)
            results.append((rec.to_dataset().gram.values, _hooks(rec)._n_native))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-10, atol=1e-13)
    assert results[0][1] == 5 and results[1][1] == 0
