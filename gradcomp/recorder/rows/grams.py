"""Gram entries of the per-task blocks of one ``"rows"`` step, with few products.

For one parameter with per-task blocks ``B`` (``[T, P]`` flattened) the Gram is ``B Bᵀ``
(:func:`gradcomp.gram.gram`). For many small parameters (biases, LayerNorm, the layers of a small
model) one product each is dominated by the per-call overhead, so :func:`batched_grams` stacks
the blocks of equal size and takes one batched product ``[n, T, P] @ [n, P, T]`` per size. Blocks
that are a transposed view (a Linear with more outputs than inputs) are flattened in memory order
without a copy (:func:`flat_blocks`). Both give the Gram of :func:`gradcomp.gram.gram` up to the
order of summation.

(Splitting a wide parameter's tasks in halves, ``[[A Aᵀ, A Bᵀ], [·, B Bᵀ]]``, saves a quarter of
the multiply-adds and is faster alone, but reads the blocks twice: slower inside a training step
on this project's CPU, so not used.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from gradcomp.gram import acc_dtype

__all__ = ["SMALL", "batched_grams", "flat_blocks"]

#: Blocks of at most this many elements (all tasks) wait for :func:`batched_grams`.
SMALL = 1 << 14


def flat_blocks(stack: Tensor) -> Tensor:
    """``[T, P]``: each task's block ``stack[t]`` flattened, without a copy when the block is a
    permuted view of contiguous memory (e.g. the transpose of a product): the entries are then
    taken in memory order, the same order for every task, which leaves every Gram entry
    ``Σ_p B_t[p] B_s[p]`` unchanged."""
    t = stack.shape[0]
    if stack.ndim > 2 and not stack.is_contiguous():
        strides = stack.stride()
        order = sorted(range(1, stack.ndim), key=lambda d: -strides[d])
        perm = stack.permute(0, *order)
        if perm.is_contiguous():
            return perm.reshape(t, -1)
    return stack.reshape(t, -1)


def batched_grams(flats: Sequence[Tensor]) -> list[Tensor]:
    """``[T, T]`` Gram of each ``[T, P_i]`` block (in :func:`acc_dtype`), one batched product per
    group of equal ``P_i``, dtype and device.

    Args:
        flats: the flattened per-task blocks of several parameters.

    Returns:
        Their Grams, in the order of ``flats``.
    """
    groups: dict[tuple[int, int, torch.dtype, torch.device], list[int]] = {}
    for k, f in enumerate(flats):
        groups.setdefault((f.shape[0], f.shape[1], f.dtype, f.device), []).append(k)
    out: list[Tensor | None] = [None] * len(flats)
    for (_, _, dtype, _), idx in groups.items():
        dt = acc_dtype(dtype)
        if len(idx) == 1:
            f = flats[idx[0]].to(dt)
            out[idx[0]] = f @ f.T
            continue
        stack = torch.stack([flats[k] for k in idx]).to(dt)  # [n, T, P]
        grams = torch.bmm(stack, stack.transpose(1, 2))
        for j, k in enumerate(idx):
            out[k] = grams[j]
    return [g for g in out if g is not None]
