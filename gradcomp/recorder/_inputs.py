"""Validation of the task list and the losses, and the weighted training loss."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from torch import Tensor

__all__ = ["check_losses", "task_weights", "weighted_sum", "weighted_total"]


def task_weights(tasks: Sequence[str] | Mapping[str, float]) -> dict[str, float]:
    """``name -> weight`` from a sequence of names (weight 1) or a mapping, with clear errors."""
    if isinstance(tasks, str):
        raise ValueError("tasks must be a sequence of task names or a mapping name -> weight")
    items = tasks.items() if isinstance(tasks, Mapping) else [(t, 1.0) for t in tasks]
    out: dict[str, float] = {}
    for name, w in items:
        if not isinstance(name, str) or not name:
            raise ValueError(f"task names must be non-empty strings, got {name!r}")
        if name in out:
            raise ValueError(f"task {name!r} is listed twice")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise ValueError(f"the loss weight of task {name!r} must be a finite number, got {w!r}")
        out[name] = float(w)
    if len(out) < 1:
        raise ValueError("record() needs at least one task")
    return out


def weighted_sum(weights: Sequence[float], terms: Sequence[Tensor | None]) -> Tensor | None:
    """``Σ_t w_t x_t`` over the tasks whose term is not ``None`` (``None`` if none is): the
    training loss from the task losses, or a leaf's training gradient from its per-task gradients.

    Terms are added in task order and weights of 1 are not multiplied, so ``la + lb`` and
    ``ga + gb`` are reproduced bit for bit. A single term is returned as it is (it may alias a
    per-task gradient: callers copy those before any change).
    """
    total: Tensor | None = None
    for w, x in zip(weights, terms, strict=True):
        if x is None:
            continue
        term = x if w == 1.0 else x * w
        total = term if total is None else total + term
    return total


def weighted_total(ordered: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """The training loss ``Σ_t w_t L_t`` of the task losses (:func:`weighted_sum`)."""
    total = weighted_sum(weights, ordered)
    if total is None:
        raise ValueError("no task losses to add")
    return total


def check_losses(losses: Mapping[str, Tensor], tasks: Sequence[str]) -> list[Tensor]:
    """The losses of ``backward(losses)`` in task order as 0-d tensors, with clear errors for an
    unknown or missing task, a non-scalar loss and a loss without a graph."""
    if not isinstance(losses, Mapping):
        raise TypeError("backward() takes a mapping task -> scalar loss tensor")
    unknown = [t for t in losses if t not in tasks]
    missing = [t for t in tasks if t not in losses]
    if unknown or missing:
        raise ValueError(
            f"backward() got losses for unknown task(s) {unknown} and none for {missing}; "
            f"the recorded tasks are {list(tasks)}"
        )
    for t in tasks:
        loss = losses[t]
        if not isinstance(loss, Tensor) or loss.numel() != 1 or loss.ndim > 1:
            shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise ValueError(f"the loss of task {t!r} must be a scalar tensor, got {shape}")
        if not loss.requires_grad:
            raise ValueError(f"the loss of task {t!r} does not require grad (no graph)")
    return [losses[t] if losses[t].ndim == 0 else losses[t].reshape(()) for t in tasks]
