"""The ablation of ``benchmarks/rows_breakdown.py`` switches parts of ``"rows"`` off without
changing the arithmetic of training: at every level ``.grad`` equals the shipped recorder's, and
the recorder's methods are restored afterwards."""

from __future__ import annotations

import os

import torch
from _scripts import load_script
from torch import nn

import gradcomp
from gradcomp.recorder import core
from gradcomp.recorder.rows.modules.layernorm import FusedLayerNorm
from gradcomp.recorder.rows.modules.linear import FusedLinear

breakdown = load_script("benchmarks/rows_breakdown.py")


def _grads(level: int | None) -> list[torch.Tensor]:
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 8)).double()
    tasks = ["a", "b", "c"]
    heads = nn.ModuleDict({t: nn.Linear(8, 1) for t in tasks}).double()
    model = nn.ModuleDict({"trunk": trunk, "heads": heads})
    rows = {t: slice(4 * i, 4 * i + 4) for i, t in enumerate(tasks)}
    x = torch.randn(2, 12, 6, dtype=torch.float64)

    def losses(k: int) -> dict[str, torch.Tensor]:
        h = trunk(x[k])
        return {t: heads[t](h[r]).pow(2).mean() for t, r in rows.items()}

    with gradcomp.record(model, tasks, strategy="rows", shared=trunk) as rec:
        rec.backward(losses(0), step=0, rows=rows)  # the first step checks rows=
        model.zero_grad()
        with breakdown.variant(len(breakdown.VARIANTS) - 1 if level is None else level):
            rec.backward(losses(1), step=1, rows=rows)
    return [p.grad.clone() for p in model.parameters()]


def test_every_level_trains_as_rows_and_the_methods_come_back() -> None:
    methods = (
        FusedLinear.__dict__["backward"],
        FusedLayerNorm.__dict__["backward"],
        core.Recorder.__dict__["_record"],
    )
    env = os.environ.get("GRADCOMP_ROWS_NATIVE")
    want = _grads(None)
    for level in range(len(breakdown.VARIANTS)):
        got = _grads(level)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-14)
    assert methods == (
        FusedLinear.__dict__["backward"],
        FusedLayerNorm.__dict__["backward"],
        core.Recorder.__dict__["_record"],
    )
    assert os.environ.get("GRADCOMP_ROWS_NATIVE") == env
