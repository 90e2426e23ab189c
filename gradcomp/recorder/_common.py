"""Pieces the strategies share: stacking per-task gradients and writing the training gradient."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from gradcomp.recorder._graph import accumulate
from gradcomp.recorder.shared import Layout

__all__ = ["shared_stacks", "weighted_sum", "write_training_grad"]


def weighted_sum(weights: Sequence[float], grads: Sequence[Tensor | None]) -> Tensor | None:
    """``Σ_t w_t g_t`` over the tasks whose gradient reached the leaf (``None`` if none did)."""
    total: Tensor | None = None
    for w, g in zip(weights, grads, strict=True):
        if g is None:
            continue
        term = g if w == 1.0 else g * w
        if total is None:
            total = term  # may alias a per-task gradient: callers copy those before any change
        else:
            total = total + term
    return total


def shared_stacks(
    layout: Layout, leaves: Sequence[Tensor], per_task: Sequence[Sequence[Tensor | None]]
) -> list[Tensor]:
    """``[T, *shape]`` per-task gradients of each shared parameter (zeros where a task misses it).

    Args:
        layout: the shared parameters.
        leaves: the leaves the gradients belong to.
        per_task: ``per_task[t][k]``: task t's gradient of ``leaves[k]``.
    """
    where = {id(leaf): k for k, leaf in enumerate(leaves)}
    stacks = []
    for p in layout.params:
        k = where.get(id(p))
        gs = [None if k is None else task[k] for task in per_task]
        like = next((g for g in gs if g is not None), None)
        if like is None:
            stacks.append(torch.zeros((len(per_task), *p.shape), dtype=p.dtype, device=p.device))
        else:
            stacks.append(torch.stack([torch.zeros_like(like) if g is None else g for g in gs]))
    return stacks


def write_training_grad(
    leaves: Sequence[Tensor], weights: Sequence[float], per_task: Sequence[Sequence[Tensor | None]]
) -> None:
    """Accumulate ``Σ_t w_t ∂L_t/∂leaf`` into every ``leaf.grad``, as ``backward`` would."""
    accumulate(
        leaves,
        [weighted_sum(weights, [task[k] for task in per_task]) for k in range(len(leaves))],
    )
