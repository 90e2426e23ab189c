"""Worked example: a third-party strategy added in one file by registering it.

``Loop64`` is the ``"loop"`` strategy with its per-task gradients stacked in float64 (so the
Gram reduction of a float32 model accumulates in float64). It is checked equal to ``"loop"``
and to the naive per-task reference (:mod:`gradcomp.reference`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn

import gradcomp
from gradcomp.recorder.loop import loop
from gradcomp.recorder.strategy import (
    StepContext,
    StepInputs,
    StepResult,
    register_strategy,
    strategy_names,
    unregister_strategy,
)
from gradcomp.reference import gram_reference, per_task_gradients


class Loop64:
    """One reverse pass per task, per-task gradients stacked in float64."""

    name: ClassVar[str] = "loop64"
    needs: ClassVar[dict[str, str]] = {}  # no backward() arguments beyond the losses

    def applies(self, ctx: StepContext) -> bool | str:
        return True

    def compute(self, step: StepInputs) -> StepResult:
        stacks = loop(step.losses, step.weights, step.layout, step.leaves(), step.train)
        return StepResult(stacks=[s.to(torch.float64) for s in stacks])


@pytest.fixture
def loop64() -> Iterator[None]:
    register_strategy(Loop64)
    yield
    unregister_strategy("loop64")


def _problem(dtype: torch.dtype) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.ModuleDict(
        {
            "trunk": nn.Sequential(nn.Linear(4, 6), nn.Tanh()),
            "a": nn.Linear(6, 1),
            "b": nn.Linear(6, 1),
            "c": nn.Linear(6, 1),
        }
    ).to(dtype)
    return model, torch.randn(8, 4, dtype=dtype), torch.randn(8, 3, dtype=dtype)


def _losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    h = model["trunk"](x)
    return {t: ((model[t](h)[:, 0] - y[:, i]) ** 2).mean() for i, t in enumerate("abc")}


def _record(model: nn.Module, x: torch.Tensor, y: torch.Tensor, strategy: str, steps: int = 3):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradcomp.record(model, list("abc"), strategy=strategy) as rec:
        for _ in range(steps):
            opt.zero_grad()
            rec.backward(_losses(model, x, y))
            opt.step()
    return rec.to_dataset()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_registered_strategy_equals_loop(loop64: None, dtype: torch.dtype) -> None:
    assert "loop64" in strategy_names()
    model, x, y = _problem(dtype)
    twin = copy.deepcopy(model)
    ds = _record(model, x, y, "loop64")
    ref = _record(twin, x, y, "loop")
    assert json.loads(ds.attrs["config"])["strategies_used"] == ["loop64"]
    # training is the same: .grad is written by the same loop
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)
    # float32: the two Grams differ by their accumulation's rounding, ~eps32 · ‖g_t‖‖g_s‖
    eps = 1e-12 if dtype == torch.float64 else 1e-5
    gram, want = ds["gram"].values, ref["gram"].values
    diag = np.sqrt(np.einsum("...tt->...t", want))
    np.testing.assert_array_less(np.abs(gram - want), eps * diag[..., :, None] * diag[..., None, :])
    np.testing.assert_allclose(ds["loss"].values, ref["loss"].values, rtol=0, atol=0)


def test_registered_strategy_equals_reference_in_float64(loop64: None) -> None:
    model, x, y = _problem(torch.float64)
    twin = copy.deepcopy(model)
    ds = _record(model, x, y, "loop64", steps=1)
    trunk = list(twin["trunk"].parameters())
    grads = per_task_gradients(list(_losses(twin, x, y).values()), trunk)
    want = gram_reference(grads)
    got = ds["gram"].sel(layer="all").isel(step=0).values
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


def test_registry_refuses_bad_strategies(loop64: None) -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_strategy(Loop64)
    with pytest.raises(ValueError, match="not 'auto'"):
        register_strategy(type("Auto", (Loop64,), {"name": "auto"}))
    with pytest.raises(TypeError, match="compute"):
        register_strategy(type("Half", (), {"name": "half", "needs": {}, "applies": None}))
    with pytest.raises(ValueError, match="no strategy"):
        unregister_strategy("never-registered")


def test_unregistered_strategy_is_refused() -> None:
    model, _, _ = _problem(torch.float64)
    with pytest.raises(ValueError, match="strategy must be one of"):
        gradcomp.record(model, list("abc"), strategy="loop64")
