"""The Gram products of the ``"rows"`` step (:mod:`gradcomp.recorder.rows.grams`): batched over
small parameters, flattened without a copy from transposed blocks, each equal to ``B Bᵀ`` in
float64, and a recording that takes both paths equals the per-task autograd loop."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import gradcomp
from gradcomp.recorder.rows import grams as rows_grams
from gradcomp.recorder.rows import hooks as rows_hooks
from gradcomp.reference import gram_reference, per_task_gradients


def _naive(flat: torch.Tensor) -> np.ndarray:
    f = flat.double().numpy()
    t = f.shape[0]
    return np.array([[float(np.dot(f[i], f[j])) for j in range(t)] for i in range(t)])


def test_flat_blocks_of_views_keep_the_gram() -> None:
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(4, 5, 3, dtype=torch.float64, generator=gen)
    want = _naive(base.reshape(4, -1))
    for view in (base, base.transpose(1, 2), base.permute(0, 2, 1)[:, :, :]):
        flat = rows_grams.flat_blocks(view)
        assert flat.shape == (4, 15)
        np.testing.assert_allclose((flat @ flat.T).numpy(), want, rtol=1e-12, atol=1e-12)
    assert rows_grams.flat_blocks(base.transpose(1, 2)).data_ptr() == base.data_ptr()  # no copy
    sliced = base[:, ::2]  # not a permutation of contiguous memory: copied, same Gram
    np.testing.assert_allclose(
        (rows_grams.flat_blocks(sliced) @ rows_grams.flat_blocks(sliced).T).numpy(),
        _naive(sliced.reshape(4, -1)), rtol=1e-12, atol=1e-12,
    )  # fmt: skip


def test_batched_grams_equal_naive_float64_in_order() -> None:
    gen = torch.Generator().manual_seed(0)
    sizes = [(4, 7), (4, 3), (4, 7), (4, 7), (2, 7), (4, 3), (4, 1)]
    flats = [torch.randn(t, p, dtype=torch.float64, generator=gen) for t, p in sizes]
    flats.append(torch.randn(4, 7, generator=gen))  # float32: its own group
    got = rows_grams.batched_grams(flats)
    assert len(got) == len(flats)
    for f, g in zip(flats, got, strict=True):
        assert g.dtype == (torch.float64 if f.dtype == torch.float64 else torch.float32)
        tol = 1e-10 if f.dtype == torch.float64 else 1e-5
        np.testing.assert_allclose(g.numpy(), _naive(f), rtol=tol, atol=tol)
    assert rows_grams.batched_grams([]) == []


@pytest.mark.parametrize("units", [False, True])
def test_rows_wide_and_small_grams_equal_loop_float64(
    units: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """T = 8 tasks, wide Linears (one with out > in: transposed blocks) and small parameters of
    equal sizes (the batched products): every layer's Gram equals the per-task
    ``torch.autograd.grad`` loop, and ``.grad`` a plain backward, in float64."""
    tasks = [f"t{i}" for i in range(8)]
    torch.manual_seed(1)
    d = 256
    assert 8 * d * d > rows_grams.SMALL
    trunk = nn.Sequential(nn.Linear(6, d), nn.Tanh(), nn.Linear(d, d), nn.LayerNorm(d))
    trunk.extend([nn.Linear(d, 2 * d), nn.Tanh(), nn.Linear(2 * d, 6), nn.Linear(6, 6)])
    heads = nn.ModuleDict({t: nn.Linear(6, 1) for t in tasks})
    m = nn.ModuleDict({"trunk": trunk, "heads": heads}).double()
    plain = copy.deepcopy(m)
    x = torch.randn(16, 3, 6, dtype=torch.float64)
    rows = {t: slice(2 * i, 2 * i + 2) for i, t in enumerate(tasks)}
    weights = {t: 0.5 + 0.25 * i for i, t in enumerate(tasks)}

    def losses_of(model: nn.ModuleDict) -> dict[str, torch.Tensor]:
        h = model["trunk"](x)
        return {t: model["heads"][t](h[r]).pow(2).mean() for t, r in rows.items()}

    shapes: list[tuple[int, ...]] = []
    batched: list[int] = []
    gram, batched_grams = rows_hooks.block_gram, rows_hooks.batched_grams

    def spy_gram(flat: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(flat.shape))
        return gram(flat)

    def spy_batched(flats: list[torch.Tensor]) -> list[torch.Tensor]:
        batched.append(len(flats))
        return batched_grams(flats)

    monkeypatch.setattr(rows_hooks, "block_gram", spy_gram)
    monkeypatch.setattr(rows_hooks, "batched_grams", spy_batched)
    params = list(trunk.parameters())
    with gradcomp.record(m, weights, strategy="rows", shared=trunk, units=units) as rec:
        losses = losses_of(m)
        grads = per_task_gradients(list(losses.values()), params)
        m.zero_grad()
        rec.backward(losses, rows=rows)
    assert (8, d * d) in shapes and (8, 2 * d * d) in shapes  # wide weights: one product each
    assert batched == [len(params) - len(shapes)]  # every other parameter: batched
    got = rec.to_dataset().gram.isel(step=0)
    np.testing.assert_allclose(got.sel(layer="all"), gram_reference(grads), 1e-10, 1e-12)
    names = [n for n, _ in trunk.named_parameters()]
    for layer in ("0", "2", "3", "4", "6", "7"):
        idx = [i for i, n in enumerate(names) if n.rpartition(".")[0] == layer]
        want = gram_reference(grads, idx)
        np.testing.assert_allclose(got.sel(layer=f"trunk.{layer}"), want, 1e-10, 1e-12)
    lp = losses_of(plain)
    sum(weights[t] * lp[t] for t in tasks).backward()
    for p, q in zip(trunk.parameters(), plain["trunk"].parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12)


def test_linear_sum_of_transposed_blocks_equals_sum_float64() -> None:
    from gradcomp.recorder.rows.modules.linear import _sum_tasks

    base = torch.randn(3, 5, 4, dtype=torch.float64)
    for raw in (base, base.transpose(1, 2)):
        got = _sum_tasks(raw, torch.float64)
        assert got.is_contiguous()
        torch.testing.assert_close(got, raw.sum(0), rtol=1e-12, atol=1e-12)
