"""Worked example (docs/architecture.md): adding a module type to the ``"rows"`` strategy.

A module type is registered once, with a function that turns the module's input ``X`` and output
gradient ``G`` (of the one backward of ``Σ_t w_t L_t``) into per-task gradient blocks, each summed
over the task's own batch rows. For an elementwise scale ``y = x ⊙ w``, ``∂L/∂w = Σ_rows G ⊙ X``.
The recorder then splits it by rows (forward-hook path), checked here against the per-task loop
in float64.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import gradcomp
from gradcomp.recorder.rows import Split, register_rows_module, supported
from gradcomp.recorder.rows import step as step_mod
from gradcomp.reference import gram_reference, per_task_gradients


class Scale(nn.Module):
    """``y = x ⊙ w`` over the last dimension."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.linspace(0.5, 1.5, d))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.w


@register_rows_module(Scale, params=lambda m: ("w",))
def scale_blocks(module: Scale, x: Tensor, g: Tensor, split: Split) -> dict[str, Tensor]:
    """Per task t: ``Σ_{rows of t} G ⊙ X`` → ``[T, d]``."""
    gx = (g * x).to(split.dtype).reshape(g.shape[0], -1, g.shape[-1])  # [batch, ..., d]
    return {"w": torch.stack([gx[r].sum((0, 1)) for r in split.rows])}


def test_a_registered_scale_module_equals_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    assert supported(Scale(3)) == ("w",)
    torch.manual_seed(0)
    tasks = ["a", "b", "c"]
    trunk = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), Scale(5), nn.Linear(5, 5))
    heads = nn.ModuleDict({t: nn.Linear(5, 1) for t in tasks})
    model = nn.ModuleDict({"trunk": trunk, "heads": heads}).double()
    x = torch.randn(9, 2, 4, dtype=torch.float64)
    rows = {"a": [0, 4], "b": slice(1, 4), "c": [5, 6, 7, 8]}
    fallback: list[object] = []
    monkeypatch.setattr(step_mod, "stacks_from_jacobian", lambda *a: fallback.append(a))
    with gradcomp.record(model, tasks, strategy="rows", shared=trunk) as rec:
        h = trunk(x)
        losses = {t: heads[t](h[r]).pow(2).mean() for t, r in rows.items()}
        grads = per_task_gradients(list(losses.values()), list(trunk.parameters()))
        rec.backward(losses, rows=rows)
    assert not fallback  # the Scale was split by rows, not by the vmapped fallback
    got = rec.to_dataset().gram.isel(step=0)
    np.testing.assert_allclose(got.sel(layer="trunk.2"), gram_reference(grads, [2]), 1e-10, 1e-14)
    np.testing.assert_allclose(got.sel(layer="all"), gram_reference(grads), 1e-10, 1e-14)
