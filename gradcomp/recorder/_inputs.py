"""Validation of the task list and the losses, and the weighted training loss."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from torch import Tensor

__all__ = ["task_weights", "weighted_total"]


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


def weighted_total(ordered: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """``Σ_t w_t L_t`` (weights of 1 are not multiplied, so ``la + lb`` is reproduced exactly)."""
    total: Tensor | None = None
    for w, loss in zip(weights, ordered, strict=True):
        term = loss if w == 1.0 else w * loss
        total = term if total is None else total + term
    assert total is not None
    return total
