"""``"rows"`` through Conv1d/Conv2d (fused path, forward-hook path under autocast or behind an
existing instance ``forward``), and the fallback for convolutions it does not split: each equals
the naive per-task loop (one ``autograd.grad`` per task) in float64."""

from __future__ import annotations

import copy
import functools
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import gradcomp
from gradcomp.recorder import rows as rows_mod
from gradcomp.recorder.rows import step as step_mod
from gradcomp.reference import gram_reference, per_task_gradients, unit_gram_reference

TASKS = ["a", "b", "c", "d"]
EVEN = {t: slice(3 * i, 3 * (i + 1)) for i, t in enumerate(TASKS)}
UNEVEN = {"a": [0, 5], "b": [1, 2, 3], "c": [4, 11, 6], "d": [7, 8, 9, 10]}
PARTIAL = {"a": [0, 5], "b": [1, 3], "c": [4, 6], "d": [8, 9, 10]}  # rows 2, 7, 11 unused

CONV2D = {
    "plain": lambda: nn.Conv2d(3, 4, 3),
    "stride_pad_nobias": lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False),
    "dilation_rect": lambda: nn.Conv2d(
        3, 4, (3, 2), stride=(2, 1), padding=(2, 0), dilation=(2, 1)
    ),
    "groups_same": lambda: nn.Conv2d(3, 6, 3, padding="same", groups=3),
}
CONV1D = {
    "plain": lambda: nn.Conv1d(3, 4, 3),
    "stride_pad_dil": lambda: nn.Conv1d(3, 4, 5, stride=2, padding=2, dilation=2),
    "valid_nobias": lambda: nn.Conv1d(3, 4, 2, padding="valid", bias=False),
}


def _model(conv: nn.Module, dims: int, dtype: torch.dtype = torch.float64) -> nn.ModuleDict:
    torch.manual_seed(5)
    c = conv.out_channels
    second = nn.Conv2d(c, 5, 3, padding=1) if dims == 2 else nn.Conv1d(c, 5, 3, padding=1)
    trunk = nn.Sequential(conv, nn.Tanh(), second, nn.Tanh(), nn.Flatten(), nn.LazyLinear(6))
    heads = nn.ModuleDict({t: nn.Linear(6, 1) for t in TASKS})
    m = nn.ModuleDict({"trunk": trunk, "heads": heads})
    m["trunk"](torch.zeros((1, 3, 9, 8) if dims == 2 else (1, 3, 11)))  # materialise LazyLinear
    return m.to(dtype)


def _losses(m: nn.ModuleDict, x: torch.Tensor, rows: dict[str, Any]) -> dict[str, torch.Tensor]:
    h = m["trunk"](x)
    return {t: (m["heads"][t](h[r]) - 0.3).pow(2).mean() for t, r in rows.items()}


def _input(dims: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    torch.manual_seed(11)
    return torch.randn((12, 3, 9, 8) if dims == 2 else (12, 3, 11), dtype=dtype)


def _spy_fallback(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """Record the parameter names that take the vmapped fallback."""
    seen: list[tuple[str, ...]] = []
    inner = step_mod.stacks_from_jacobian

    def spy(sub: Any, *a: Any) -> Any:
        seen.append(tuple(sub.names))
        return inner(sub, *a)

    monkeypatch.setattr(step_mod, "stacks_from_jacobian", spy)
    return seen


def _check(m: nn.ModuleDict, x: torch.Tensor, rows: dict[str, Any], tol: float = 1e-10) -> None:
    """Record two steps with ``"rows"`` and compare every layer's Gram (and the Linear's unit
    Grams) to the loop, and ``.grad`` to a plain backward."""
    weights = {t: 0.5 + i for i, t in enumerate(TASKS)}
    plain = copy.deepcopy(m)
    names = [n for n, _ in m["trunk"].named_parameters()]
    refs = []
    with gradcomp.record(m, weights, strategy="rows", shared=m["trunk"], units=True) as rec:
        for _ in range(2):
            losses = _losses(m, x, rows)
            refs.append(per_task_gradients(list(losses.values()), list(m["trunk"].parameters())))
            m.zero_grad()
            rec.backward(losses, rows=rows)
    ds = rec.to_dataset()
    layers = sorted({n.rpartition(".")[0] for n in names})
    for k, grads in enumerate(refs):
        step = ds.gram.isel(step=k)
        np.testing.assert_allclose(step.sel(layer="all"), gram_reference(grads), tol, 1e-14)
        for layer in layers:
            idx = [i for i, n in enumerate(names) if n.rpartition(".")[0] == layer]
            want = gram_reference(grads, idx)
            np.testing.assert_allclose(step.sel(layer=f"trunk.{layer}"), want, tol, 1e-14)
        idx = [i for i, n in enumerate(names) if n.startswith("5.")]
        got_u = ds.unit_gram.isel(step=k).sel(layer="trunk.5").values
        np.testing.assert_allclose(got_u, unit_gram_reference(grads, idx, 6), tol, 1e-14)
    lp = _losses(plain, x, rows)
    sum(weights[t] * lp[t] for t in TASKS).backward()
    for (n, p), q in zip(m.named_parameters(), plain.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None, n
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-13, msg=n)


@pytest.mark.parametrize("rows", [EVEN, UNEVEN, PARTIAL], ids=["even", "uneven", "partial"])
@pytest.mark.parametrize("variant", sorted(CONV2D))
def test_conv2d_rows_equal_loop_float64(
    variant: str, rows: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    fallback = _spy_fallback(monkeypatch)
    _check(_model(CONV2D[variant](), 2), _input(2), rows)
    assert fallback == []  # every conv was split by rows, none took the vmapped fallback


@pytest.mark.parametrize("rows", [EVEN, UNEVEN], ids=["even", "uneven"])
@pytest.mark.parametrize("variant", sorted(CONV1D))
def test_conv1d_rows_equal_loop_float64(
    variant: str, rows: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    fallback = _spy_fallback(monkeypatch)
    _check(_model(CONV1D[variant](), 1), _input(1), rows)
    assert fallback == []


@pytest.mark.parametrize(
    "conv",
    [
        lambda: nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"),
        lambda: nn.Conv2d(3, 4, 2, padding="same"),  # asymmetric padding
    ],
    ids=["reflect", "same_even_kernel"],
)
def test_unsupported_conv_takes_the_fallback_and_stays_exact(
    conv: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = conv()
    assert rows_mod.supported(c) == ()
    fallback = _spy_fallback(monkeypatch)
    _check(_model(c, 2), _input(2), UNEVEN)
    assert fallback == [("trunk.0.weight", "trunk.0.bias")] * 2  # one per recorded step


def test_existing_instance_forward_is_kept_and_still_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrapper in ``module.__dict__["forward"]`` (as accelerate's hooks) is never replaced:
    the module takes the forward-hook path, the wrapper runs on every call, results stay exact."""
    m = _model(nn.Conv2d(3, 4, 3, stride=2, padding=1), 2)
    trunk = m["trunk"]
    trunk.insert(5, nn.LayerNorm(trunk[5].in_features, dtype=torch.float64))  # before the Linear
    calls: dict[str, int] = {}
    wrapped = {}
    for i in (0, 2, 5, 6):  # conv, conv, LayerNorm, Linear
        mod = trunk[i]
        old = mod.forward

        def wrapper(*a: Any, _old: Any = old, _i: int = i, **kw: Any) -> Any:
            calls[str(_i)] = calls.get(str(_i), 0) + 1
            return _old(*a, **kw)

        mod.forward = functools.update_wrapper(wrapper, old)
        wrapped[i] = mod.__dict__["forward"]
    fallback = _spy_fallback(monkeypatch)
    x = _input(2)
    weights = {t: 0.5 + i for i, t in enumerate(TASKS)}
    names = [n for n, _ in trunk.named_parameters()]
    with gradcomp.record(m, weights, strategy="rows", shared=trunk, units=True) as rec:
        for i in wrapped:
            assert trunk[i].__dict__["forward"] is wrapped[i]  # not overwritten
        losses = _losses(m, x, UNEVEN)
        grads = per_task_gradients(list(losses.values()), list(trunk.parameters()))
        rec.backward(losses, rows=UNEVEN)
    assert calls == {"0": 1, "2": 1, "5": 1, "6": 1}
    assert fallback == []
    for i in wrapped:
        assert trunk[i].__dict__["forward"] is wrapped[i]  # still there after the recorder
    got = rec.to_dataset().gram.isel(step=0)
    np.testing.assert_allclose(got.sel(layer="all"), gram_reference(grads), 1e-10, 1e-14)
    for layer in ("0", "2", "5", "6"):
        idx = [k for k, n in enumerate(names) if n.rpartition(".")[0] == layer]
        want = gram_reference(grads, idx)
        np.testing.assert_allclose(got.sel(layer=f"trunk.{layer}"), want, 1e-10, 1e-14)


def test_conv_under_autocast_takes_the_hook_and_matches() -> None:
    m = _model(nn.Conv2d(3, 4, 3, padding=1), 2, torch.float32)
    x = _input(2, torch.float32)
    with gradcomp.record(m, TASKS, strategy="rows", shared=m["trunk"]) as rec:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses = {t: v.float() for t, v in _losses(m, x, EVEN).items()}
        grads = per_task_gradients(list(losses.values()), list(m["trunk"].parameters()))
        rec.backward(losses, rows=EVEN)
    got = rec.to_dataset().gram.isel(step=0).sel(layer="trunk.0").values
    np.testing.assert_allclose(got, gram_reference(grads, [0, 1]), rtol=3e-2, atol=1e-4)


def test_registry_covers_the_builtin_types_through_subclasses() -> None:
    class MyConv(nn.Conv2d):
        pass

    assert set(rows_mod.registered()) >= {
        nn.Linear,
        nn.LayerNorm,
        nn.Embedding,
        nn.Conv1d,
        nn.Conv2d,
    }
    assert rows_mod.supported(MyConv(2, 2, 1)) == ("weight", "bias")
    assert rows_mod.supported(nn.Conv3d(2, 2, 1)) == ()
    assert rows_mod.supported(nn.ConvTranspose2d(2, 2, 1)) == ()
    assert rows_mod.supported(nn.Embedding(5, 2, sparse=True)) == ()
    with pytest.raises(TypeError, match=r"nn\.Module subclasses"):
        rows_mod.register_rows_module(int, params=lambda m: ())  # type: ignore[arg-type]


def test_a_forward_wrapped_after_install_survives_removal() -> None:
    """A wrapper put on a module while the fused ``forward`` is installed is not deleted when the
    recorder removes its own (it would take the wrapper with it)."""
    m = _model(nn.Conv2d(3, 4, 3), 2)
    conv = m["trunk"][0]
    x = _input(2)
    want = m["trunk"](x)
    with gradcomp.record(m, TASKS, strategy="rows", shared=m["trunk"]) as rec:
        assert "forward" in conv.__dict__  # the fused path is installed
        rec.backward(_losses(m, x, EVEN), rows=EVEN)
        inner = conv.forward
        conv.forward = lambda *a, **kw: inner(*a, **kw)
        wrapper = conv.__dict__["forward"]
    assert conv.__dict__["forward"] is wrapper
    torch.testing.assert_close(m["trunk"](x), want, rtol=0, atol=0)
