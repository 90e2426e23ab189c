"""``nn.Linear`` for the ``"rows"`` strategy: the weight gradient is formed as the sum of the
per-task row blocks, so splitting it costs no extra matrix product.

For tasks that own disjoint row sets R_t of the batch, ``∂(Σ_t w_t L_t)/∂W = Gᵀ X =
Σ_t G_{R_t}ᵀ X_{R_t}``: the blocks are computed (one batched product when every task owns the same
number of consecutive rows), handed to the recorder, and summed into the weight gradient. Only
while the recorder is armed, and only for modules whose class uses ``nn.Linear.forward``; the
forward result is ``F.linear`` itself.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FusedLinear", "patchable"]


class _Sink(Protocol):
    def linear_blocks(
        self, name: str, module: nn.Linear, x: Tensor, g: Tensor
    ) -> tuple[Tensor, Tensor | None] | None:
        """Record the per-task blocks; return ``Σ_t`` blocks (weight and bias gradients) or
        ``None``."""
        ...


def patchable(module: nn.Module) -> bool:
    """Whether ``module`` is a Linear whose forward is exactly ``F.linear(x, weight, bias)``."""
    return isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward


class FusedLinear(torch.autograd.Function):
    """``F.linear`` whose backward lets the recorder form the weight gradient from row blocks."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        sink: _Sink,
        name: str,
        module: nn.Linear,
    ) -> Tensor:
        out = F.linear(x, weight, bias)
        ctx.save_for_backward(x, weight)
        ctx.sink, ctx.name, ctx.module = sink, name, module
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        cd = g.dtype  # the forward's compute dtype (bf16 under autocast)
        gx = g.matmul(weight.to(cd)) if ctx.needs_input_grad[0] else None
        gw = gb = sums = None
        if ctx.needs_input_grad[1] or (ctx.has_bias and ctx.needs_input_grad[2]):
            sums = ctx.sink.linear_blocks(ctx.name, ctx.module, x, g)
        if ctx.needs_input_grad[1]:
            if sums is None:
                gw = g.reshape(-1, g.shape[-1]).T @ x.to(cd).reshape(-1, x.shape[-1])
            else:
                gw = sums[0]
            gw = gw.to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = sums[1] if sums is not None else None
            if gb is None:
                gb = g.reshape(-1, g.shape[-1]).sum(0)
            gb = gb.to(ctx.module.bias.dtype)
        return gx, gw, gb, None, None, None
