"""``nn.LayerNorm`` for the ``"rows"`` strategy: the per-task blocks of ``γ`` and ``β`` come out of
the module's own backward, from the mean and reciprocal standard deviation its forward saved.

With ``X̂ = (X − mean) · rstd`` (the normalised input of the forward) and ``G`` the output
gradient, ``∂/∂γ = Σ_rows G ⊙ X̂`` and ``∂/∂β = Σ_rows G``. The forward is
``torch.native_layer_norm`` (which returns ``mean`` and ``rstd``), so the statistics need no
second normalisation of the input; the input gradient is ``native_layer_norm_backward`` without
its parameter reductions, and ``.grad`` of ``γ`` and ``β`` is the sum of the per-task blocks when
the tasks' rows cover the batch (else the ordinary reduction). Only for modules whose class uses
``nn.LayerNorm.forward`` with both affine parameters, outside autocast.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor, nn

__all__ = ["FusedLayerNorm", "patchable_layernorm"]


class _Sink(Protocol):
    def layernorm_blocks(
        self, name: str, module: nn.LayerNorm, g: Tensor, gxhat: Tensor
    ) -> tuple[Tensor, Tensor] | None:
        """Record the per-task blocks; return ``Σ_t`` of them (``.grad`` of γ, β) or ``None``."""
        ...


def patchable_layernorm(module: nn.Module) -> bool:
    """Whether ``module`` is a LayerNorm whose forward is exactly ``F.layer_norm`` with γ and β."""
    return (
        isinstance(module, nn.LayerNorm)
        and type(module).forward is nn.LayerNorm.forward
        and module.weight is not None
        and getattr(module, "bias", None) is not None
    )


class FusedLayerNorm(torch.autograd.Function):
    """``F.layer_norm`` whose backward hands the recorder G and ``G ⊙ X̂`` for the row blocks."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        bias: Tensor,
        sink: _Sink,
        name: str,
        module: nn.LayerNorm,
    ) -> Tensor:
        shape = list(module.normalized_shape)
        out, mean, rstd = torch.native_layer_norm(x, shape, weight, bias, module.eps)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.sink, ctx.name, ctx.module, ctx.shape = sink, name, module, shape
        return out

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, bias, mean, rstd = ctx.saved_tensors
        gx = None
        if ctx.needs_input_grad[0]:
            gx = torch.ops.aten.native_layer_norm_backward(
                g, x, ctx.shape, mean, rstd, weight, bias, [True, False, False]
            )[0]
        gw = gb = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            gxhat = g * ((x - mean) * rstd)
            sums = ctx.sink.layernorm_blocks(ctx.name, ctx.module, g, gxhat)
            if sums is None:
                lead = tuple(range(g.ndim - len(ctx.shape)))
                sums = gxhat.sum(lead), g.sum(lead)
            gw = sums[0].to(weight.dtype) if ctx.needs_input_grad[1] else None
            gb = sums[1].to(bias.dtype) if ctx.needs_input_grad[2] else None
        return gx, gw, gb, None, None, None
