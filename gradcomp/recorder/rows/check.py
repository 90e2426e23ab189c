"""Check ``rows=`` against the autograd graph on the first ``"rows"`` step.

``"rows"`` is exact iff, for every shared module the hooks split and every task t,
``∂L_t/∂out`` is zero on the batch rows ``rows=`` does not give to t (then the output gradient
of ``Σ_s w_s L_s`` on t's rows is ``w_t ∂L_t/∂out``). A ``rows=`` that misdescribes which rows a
loss reads, batch rows not along dimension 0, or a model that mixes rows (batch norm, attention
across the batch) breaks this and would give a wrong Gram with no error. So on the first step the
recorder takes ``∂L_t/∂out`` for every task and every captured module output (one
``torch.autograd.grad`` per task, graph retained: T reverse passes down to the lowest shared
module, once) and raises a ``ValueError`` naming the task, the rows and the module where the
gradient is not zero outside the task's rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

__all__ = ["verify_rows"]

_SHOW = 8  # rows named in the error


def verify_rows(
    outputs: Mapping[str, Sequence[Tensor]],
    batch_size: int,
    rows: Sequence[slice | Tensor],
    tasks: Sequence[str],
    losses: Sequence[Tensor],
) -> None:
    """Raise a ``ValueError`` if a task's loss depends on batch rows ``rows=`` does not give it.

    Args:
        outputs: module name -> its outputs in this step's forward (one per call); those whose
            leading size is not ``batch_size`` or that need no gradient are skipped.
        batch_size: the batch's leading size.
        rows: each task's rows (:func:`gradcomp.recorder.rows.as_row_index`), task order.
        tasks: task names.
        losses: the task losses (graphs retained).
    """
    outs = [
        (name, o)
        for name, calls in outputs.items()
        for o in calls
        if o.requires_grad and o.ndim and o.shape[0] == batch_size
    ]
    if not outs or not batch_size:
        return
    owner = torch.full((batch_size,), -1, dtype=torch.long)
    for t, r in enumerate(rows):
        owner[r.cpu() if isinstance(r, Tensor) else r] = t
    for t, (task, loss) in enumerate(zip(tasks, losses, strict=True)):
        grads = torch.autograd.grad(
            loss, [o for _, o in outs], retain_graph=True, allow_unused=True
        )
        for (name, _), g in zip(outs, grads, strict=True):
            if g is None:
                continue
            used = ((g != 0) & torch.isfinite(g)).reshape(batch_size, -1).any(1).cpu()
            wrong = used & (owner != t)
            if bool(wrong.any()):
                raise ValueError(_message(task, name, wrong, owner, tasks))


def _message(task: str, module: str, wrong: Tensor, owner: Tensor, tasks: Sequence[str]) -> str:
    bad = wrong.nonzero().flatten().tolist()
    shown = ", ".join(str(r) for r in bad[:_SHOW]) + (", ..." if len(bad) > _SHOW else "")
    holders = sorted({tasks[o] if o >= 0 else "no task" for o in owner[bad].tolist()})
    return (
        f"rows= does not describe task {task!r}: its loss depends on batch rows [{shown}] "
        f"({len(bad)} row(s)) of the output of {module or 'the model'!r}, which rows= gives to "
        f"{', '.join(holders)}. Strategy 'rows' would record a wrong Gram. Give each task exactly "
        "the rows (dimension 0) its loss reads; if the model mixes rows (batch norm, attention "
        "across the batch) or the batch is not dimension 0, use strategy='loop' or 'batched'"
    )
