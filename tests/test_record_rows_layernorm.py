"""``"rows"`` through LayerNorm: the fused path (blocks from the forward's mean and rstd) and the
autocast fallback (output-gradient hook) both equal the naive per-task gradients."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import gradcomp
from gradcomp.reference import gram_reference, per_task_gradients

TASKS = ["a", "b", "c", "d"]


def _model(dtype: torch.dtype) -> nn.ModuleDict:
    torch.manual_seed(3)
    trunk = nn.Sequential(nn.Linear(5, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 6))
    trunk.append(nn.LayerNorm(6))
    heads = nn.ModuleDict({t: nn.Linear(6, 1) for t in TASKS})
    return nn.ModuleDict({"trunk": trunk, "heads": heads}).to(dtype)


def _losses(m: nn.ModuleDict, x: torch.Tensor, rows: dict) -> dict[str, torch.Tensor]:
    h = m["trunk"](x)
    out = {t: m["heads"][t](h[r]).pow(2).mean() for t, r in rows.items()}
    return {t: v if v.dtype == torch.float64 else v.float() for t, v in out.items()}


@pytest.mark.parametrize("even", [True, False])
def test_fused_layernorm_blocks_equal_reference_float64(even: bool) -> None:
    m = _model(torch.float64)
    x = torch.randn(12, 8, 5, dtype=torch.float64)
    if even:
        rows = {t: slice(3 * i, 3 * (i + 1)) for i, t in enumerate(TASKS)}
    else:
        rows = {"a": [0, 5], "b": [1, 2, 3], "c": [4, 11, 6], "d": [7, 8, 9, 10]}
    weights = {t: 0.5 + i for i, t in enumerate(TASKS)}
    plain = copy.deepcopy(m)
    refs = []
    with gradcomp.record(m, weights, strategy="rows", shared=m["trunk"], units=True) as rec:
        for _ in range(2):
            losses = _losses(m, x, rows)
            params = list(m["trunk"].parameters())
            refs.append(per_task_gradients(list(losses.values()), params))
            m.zero_grad()
            rec.backward(losses, rows=rows)
    ds = rec.to_dataset()
    for k, grads in enumerate(refs):
        got = ds.gram.isel(step=k).sel(layer="all").values
        np.testing.assert_allclose(got, gram_reference(grads), rtol=1e-9, atol=1e-12)
        for layer, idx in (("trunk.1", [2, 3]), ("trunk.4", [6, 7])):
            want = gram_reference(grads, idx)
            np.testing.assert_allclose(ds.gram.isel(step=k).sel(layer=layer), want, 1e-9, 1e-12)
    # .grad of the LayerNorms (sums of the blocks) equals a plain backward's
    lp = _losses(plain, x, rows)
    sum(weights[t] * lp[t] for t in TASKS).backward()
    for (n, p), q in zip(m.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-14, msg=n)


def test_layernorm_under_autocast_takes_the_hook_and_matches() -> None:
    m = _model(torch.float32)
    x = torch.randn(12, 8, 5)
    rows = {t: slice(3 * i, 3 * (i + 1)) for i, t in enumerate(TASKS)}
    with gradcomp.record(m, TASKS, strategy="rows", shared=m["trunk"]) as rec:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses = _losses(m, x, rows)
        grads = per_task_gradients(list(losses.values()), list(m["trunk"].parameters()))
        rec.backward(losses, rows=rows)
    got = rec.to_dataset().gram.isel(step=0).sel(layer="trunk.1").values
    np.testing.assert_allclose(got, gram_reference(grads, [2, 3]), rtol=2e-2, atol=1e-4)
