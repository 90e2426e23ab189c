"""``nn.Embedding`` for the ``"rows"`` strategy: ``∂L_t/∂E`` = rows of ``G_t / w_t`` added at the
token ids the task used (only touched rows are kept).

Each call records, per task, the ids it used and their output gradients; once every call of the
module arrived, :func:`compact` adds them into ``[T, U, d]`` over the U rows any task touched,
whose Gram equals that of the full ``[T, V, d]`` gradients (untouched rows are 0). Not supported
(fallback): ``sparse=True``, ``max_norm`` and ``scale_grad_by_freq``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gradcomp.recorder.rows.blocks import Split
from gradcomp.recorder.rows.registry import register_rows_module

__all__ = ["compact", "embedding_blocks"]

Call = list[tuple[Tensor, Tensor]]  # per task: (ids [n], output gradients [n, d])


def _params(module: nn.Embedding) -> tuple[str, ...]:
    if module.sparse or module.max_norm is not None or module.scale_grad_by_freq:
        return ()
    return ("weight",)


def compact(calls: list[Call]) -> Tensor:
    """``[T, U, d]``: each task's embedding gradient on the U rows any task touched.

    The Gram of these equals the Gram of the full ``[T, V, d]`` gradients (untouched rows are 0).
    """
    n_tasks = len(calls[0])
    ids = [torch.cat([c[t][0] for c in calls]) for t in range(n_tasks)]
    vals = [torch.cat([c[t][1] for c in calls]) for t in range(n_tasks)]
    uniq, inverse = torch.unique(torch.cat(ids), return_inverse=True)
    out = vals[0].new_zeros((n_tasks, uniq.numel(), vals[0].shape[-1]))
    start = 0
    for t in range(n_tasks):
        n = ids[t].numel()
        out[t].index_add_(0, inverse[start : start + n], vals[t])
        start += n
    return out


@register_rows_module(nn.Embedding, params=_params, finish=compact)
def embedding_blocks(
    module: nn.Embedding, ids: Tensor, g: Tensor, sp: Split
) -> dict[str, list[Call]]:
    """One call: per task, the token ids it used and their output gradients (unscaled)."""
    per_task = []
    for idx in sp.rows:
        flat = ids[idx.to(ids.device) if isinstance(idx, Tensor) else idx].reshape(-1)
        gf = g[idx].to(sp.dtype).reshape(-1, g.shape[-1])
        if module.padding_idx is not None:
            keep = flat != module.padding_idx
            flat, gf = flat[keep], gf[keep]
        per_task.append((flat, gf))
    return {"weight": [per_task]}
