"""The ``"loop"`` strategy: one ``torch.autograd.grad`` per task (the plain one, always exact).

For each task t: ``g_t = ∂L_t/∂θ`` for every leaf θ the losses reach, by an ordinary
reverse pass (graph retained until the last task). The training gradient
``Σ_t w_t g_t`` is accumulated into ``.grad``: the same values a ``backward()`` of the weighted
sum gives, up to floating-point summation order, at the cost of T reverse passes and no more.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from gradcomp.recorder._common import shared_stacks, write_training_grad
from gradcomp.recorder._graph import reachable_leaves
from gradcomp.recorder.shared import Layout

__all__ = ["loop"]


def loop(
    losses: Sequence[Tensor],
    weights: Sequence[float],
    layout: Layout,
    leaves: Sequence[Tensor] | None = None,
    train: bool = True,
) -> list[Tensor]:
    """Per-task gradients of the shared parameters by one reverse pass per task.

    Args:
        losses: the T scalar task losses.
        weights: their loss weights.
        layout: the shared parameters.
        leaves: every leaf the losses may reach (default: walk the graph to find them).
        train: accumulate the training gradient into ``.grad`` (else keep the graph for the
            caller's own ``backward``).

    Returns:
        ``[T, *shape]`` per shared parameter. ``.grad`` of every reached leaf has received
        ``Σ_t w_t ∂L_t/∂θ``.
    """
    leaves = list(reachable_leaves(losses) if leaves is None else leaves)
    per_task = []
    for t, loss in enumerate(losses):
        last = train and t == len(losses) - 1
        per_task.append(torch.autograd.grad(loss, leaves, retain_graph=not last, allow_unused=True))
    if train:
        write_training_grad(leaves, weights, per_task)
    return shared_stacks(layout, leaves, per_task)
