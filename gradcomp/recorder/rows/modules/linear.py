"""``nn.Linear`` for the ``"rows"`` strategy: ``∂L_t/∂W = G_tᵀ X_t / w_t``, ``∂L_t/∂b = Σ_rows G_t
/ w_t``; in the fused path the weight gradient is formed as the sum of the per-task row blocks,
so splitting it costs no extra matrix product.

For tasks that own disjoint row sets R_t of the batch, ``∂(Σ_t w_t L_t)/∂W = Gᵀ X =
Σ_t G_{R_t}ᵀ X_{R_t}``: the blocks are computed (one batched product when every task owns the same
number of consecutive rows), handed to the recorder, and summed into the weight gradient. The
forward result is ``F.linear`` itself.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradcomp.recorder.rows.blocks import Split
from gradcomp.recorder.rows.fused import FusedWeightBias
from gradcomp.recorder.rows.registry import Sink, register_rows_module

__all__ = ["FusedLinear", "linear_blocks"]


def _to(t: Tensor, dt: torch.dtype) -> Tensor:
    return t if t.dtype == dt else t.to(dt)


def _split(x: Tensor, g: Tensor, sp: Split, dt: torch.dtype) -> tuple[Tensor, Tensor]:
    """Per-task ``G_tᵀ X_t`` ``[T, out, in]`` and ``Σ_rows G_t`` ``[T, out]`` in ``dt`` (for
    ``out > in`` the blocks are the transposed view of ``X_tᵀ G_t``)."""
    n_tasks = len(sp.rows)
    if sp.even:
        g3 = _to(sp.by_task(g, g.shape[-1]), dt)
        x3 = _to(sp.by_task(x, x.shape[-1]), dt)
        n_out, n_in = g3.shape[-1], x3.shape[-1]
        if n_out > n_in:  # the faster product has the narrower side first
            buf = sp.empty((n_tasks, n_in, n_out), dt, g.device)
            return torch.bmm(x3.transpose(1, 2), g3, out=buf).transpose(1, 2), g3.sum(1)
        buf = sp.empty((n_tasks, n_out, n_in), dt, g.device)
        return torch.bmm(g3.transpose(1, 2), x3, out=buf), g3.sum(1)
    gs = [_to(g[r], dt).reshape(-1, g.shape[-1]) for r in sp.rows]
    xs = [_to(x[r], dt).reshape(-1, x.shape[-1]) for r in sp.rows]
    raw = torch.stack([gt.T @ xt for gt, xt in zip(gs, xs, strict=True)])
    return raw, torch.stack([gt.sum(0) for gt in gs])


def _sum_tasks(raw: Tensor, dt: torch.dtype) -> Tensor:
    """``Σ_t raw[t]`` in ``dt``, contiguous; a transposed view is summed in memory order (a
    reduction over the strided view is many times slower)."""
    if not raw.is_contiguous() and raw.transpose(1, 2).is_contiguous():
        return raw.transpose(1, 2).sum(0, dtype=dt).T.contiguous()
    return raw.sum(0, dtype=dt)


def _fused(sink: Sink, name: str, module: nn.Linear, x: Tensor) -> Tensor:
    held = sink.native(name, module, x)
    if held is not None:  # the C++ function (:mod:`gradcomp.recorder.rows.native`)
        args = (held.slots, held.acc_w, held.acc_b, held.state, held.buf)
        native_out: Tensor = held.ops.linear(x, module.weight, module.bias, *args)
        return native_out
    out: Tensor = FusedLinear.apply(x, module.weight, module.bias, sink, name, module, F.linear)
    return out


@register_rows_module(nn.Linear, params=lambda m: ("weight", "bias"), fused=_fused)
def linear_blocks(module: nn.Linear, x: Tensor, g: Tensor, sp: Split) -> dict[str, Tensor]:
    """Per-task blocks of a Linear from its input ``X`` and output gradient ``G``."""
    raw, bias = _split(x, g, sp, sp.dtype)
    return {k: v for k, v in (("weight", raw), ("bias", bias)) if k in sp.want}


class FusedLinear(FusedWeightBias):
    """``F.linear`` whose backward lets the recorder form the weight gradient from row blocks."""

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        cd = g.dtype  # the forward's compute dtype (bf16 under autocast)
        gx = g.matmul(_to(weight, cd)) if ctx.needs_input_grad[0] else None
        need_w = ctx.needs_input_grad[1]
        need_b = ctx.has_bias and ctx.needs_input_grad[2]
        gw = gb = None
        sp = ctx.sink.split(ctx.name, ctx.module, g) if need_w or need_b else None
        if sp is not None:
            raw, bias = _split(x, g, sp, cd)  # in the compute dtype, as the plain backward
            if sp.full(g.shape[0]):  # before the blocks go (their buffer may be reused)
                gw = _sum_tasks(raw, sp.dtype) if need_w else None
                gb = bias.sum(0, dtype=sp.dtype) if need_b else None
            new = {}
            if "weight" in sp.want:
                new["weight"] = _to(raw, sp.dtype)
            if "bias" in sp.want:
                new["bias"] = _to(bias, sp.dtype)
            ctx.sink.add(ctx.name, new)
        if need_w:
            if gw is None:
                gw = g.reshape(-1, g.shape[-1]).T @ _to(x, cd).reshape(-1, x.shape[-1])
            gw = _to(gw, weight.dtype)
        if need_b:
            if gb is None:
                gb = g.reshape(-1, g.shape[-1]).sum(0)
            gb = _to(gb, ctx.module.bias.dtype)
        return gx, gw, gb, None, None, None, None
