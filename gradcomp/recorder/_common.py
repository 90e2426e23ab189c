"""Pieces the strategies share: stacking per-task gradients and writing the training gradient."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from gradcomp.recorder._graph import accumulate
from gradcomp.recorder._inputs import weighted_sum
from gradcomp.recorder.shared import Layout

__all__ = ["shared_stacks", "write_training_grad"]


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
