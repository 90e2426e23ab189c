"""Per-task gradient blocks of LayerNorm, Embedding and (hooked) Linear modules for ``"rows"``.

With ``G`` the output gradient of the one backward of ``Σ_t w_t L_t`` and ``X`` the module input,
the block of task t is computed from its rows only: it is ``w_t ∂L_t/∂θ``; the recorder divides
the Gram entries by ``w_t w_s`` (:attr:`Step.outer`) instead of dividing T blocks (see
:mod:`gradcomp.recorder.rows`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from gradcomp.recorder.shared import Layout

__all__ = ["Step", "blocks", "compact", "embedding_rows", "supported", "wanted"]


def supported(module: nn.Module) -> tuple[str, ...]:
    """Names of the parameters of ``module`` whose per-task gradients the hooks compute."""
    if isinstance(module, nn.Linear):
        return ("weight", "bias")
    if isinstance(module, nn.LayerNorm):
        return ("weight", "bias")
    if isinstance(module, nn.Embedding):
        if module.sparse or module.max_norm is not None or module.scale_grad_by_freq:
            return ()
        return ("weight",)
    return ()


@dataclass
class Step:
    """The state of one recorded rows step."""

    rows: list[slice | Tensor]
    scale: list[float]
    layout: Layout
    units: bool
    calls: dict[str, int]
    covered: set[str]
    even: int  # rows per task when rows are equal consecutive slices in task order, else 0
    index: dict[str, int] = field(default_factory=dict)
    outer: Tensor | None = None  # scale[t] * scale[s] (float64), None when every scale is 1
    want: dict[int, set[str]] = field(default_factory=dict)
    arrived: dict[str, int] = field(default_factory=dict)
    blocks: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    sparse: dict[str, list[list[tuple[Tensor, Tensor]]]] = field(default_factory=dict)
    done: dict[int, tuple[Tensor, Tensor | None]] = field(default_factory=dict)


def blocks(module: nn.Module, x: Tensor, g: Tensor, st: Step, dt: torch.dtype) -> dict[str, Tensor]:
    """Per-task gradients ``[T, *shape]`` of the module's trainable parameters."""
    want = wanted(module, st)
    if st.even:
        return _even_blocks(module, x, g, st, dt, want)
    return _loop_blocks(module, x, g, st.rows, dt, want)


def wanted(module: nn.Module, st: Step) -> set[str]:
    """The module's supported parameters that exist and require grad (cached per step)."""
    want = st.want.get(id(module))
    if want is None:
        want = {n for n in supported(module) if getattr(module, n, None) is not None}
        want = st.want[id(module)] = {n for n in want if getattr(module, n).requires_grad}
    return want


def _even_blocks(
    module: nn.Module, x: Tensor, g: Tensor, st: Step, dt: torch.dtype, want: set[str]
) -> dict[str, Tensor]:
    """All tasks at once when every task owns the same number of consecutive rows."""
    n_tasks = len(st.rows)
    cut = n_tasks * st.even
    g3 = g[:cut].to(dt).reshape(n_tasks, -1, g.shape[-1])
    out: dict[str, Tensor] = {}
    if isinstance(module, nn.Linear):
        if "weight" in want:
            x3 = x[:cut].to(dt).reshape(n_tasks, -1, x.shape[-1])
            out["weight"] = torch.bmm(g3.transpose(1, 2), x3)
        if "bias" in want:
            out["bias"] = g3.sum(1)
    elif isinstance(module, nn.LayerNorm):
        shape = tuple(module.normalized_shape)
        g3 = g3.reshape(n_tasks, -1, *shape)
        if "weight" in want:
            xhat = _normalize(module, x[:cut], dt).reshape(n_tasks, -1, *shape)
            out["weight"] = (g3 * xhat).sum(1)
        if "bias" in want:
            out["bias"] = g3.sum(1)
    return out


def _normalize(module: nn.LayerNorm, x: Tensor, dt: torch.dtype) -> Tensor:
    dims = tuple(range(x.ndim - len(module.normalized_shape), x.ndim))
    xf = x.to(dt)
    mean = xf.mean(dims, keepdim=True)
    var = xf.var(dims, unbiased=False, keepdim=True)
    return (xf - mean) * torch.rsqrt(var + module.eps)


def _loop_blocks(
    module: nn.Module,
    x: Tensor,
    g: Tensor,
    rows: Sequence[slice | Tensor],
    dt: torch.dtype,
    want: set[str],
) -> dict[str, Tensor]:
    """One task at a time (any row sets)."""
    out: dict[str, list[Tensor]] = {}
    if isinstance(module, nn.LayerNorm):
        xhat = _normalize(module, x, dt)
    rows = [r.to(g.device) if isinstance(r, Tensor) else r for r in rows]
    for idx in rows:
        gt = g[idx].to(dt)
        if isinstance(module, nn.Linear):
            gt2 = gt.reshape(-1, gt.shape[-1])
            if "weight" in want:
                xt = x[idx].to(dt).reshape(-1, x.shape[-1])
                out.setdefault("weight", []).append(gt2.T @ xt)
            if "bias" in want:
                out.setdefault("bias", []).append(gt2.sum(0))
        elif isinstance(module, nn.LayerNorm):
            lead = tuple(range(gt.ndim - len(module.normalized_shape)))
            if "weight" in want:
                out.setdefault("weight", []).append((gt * xhat[idx]).sum(lead))
            if "bias" in want:
                out.setdefault("bias", []).append(gt.sum(lead))
    return {k: torch.stack(v) for k, v in out.items()}


def embedding_rows(
    module: nn.Embedding, ids: Tensor, g: Tensor, st: Step, dt: torch.dtype
) -> list[tuple[Tensor, Tensor]]:
    """Per task: the token ids it used and their output gradients (unscaled)."""
    per_task = []
    rows = [r.to(ids.device) if isinstance(r, Tensor) else r for r in st.rows]
    for idx in rows:
        flat = ids[idx].reshape(-1)
        gf = g[idx].to(dt).reshape(-1, g.shape[-1])
        if module.padding_idx is not None:
            keep = flat != module.padding_idx
            flat, gf = flat[keep], gf[keep]
        per_task.append((flat, gf))
    return per_task


def compact(calls: list[list[tuple[Tensor, Tensor]]]) -> Tensor:
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
