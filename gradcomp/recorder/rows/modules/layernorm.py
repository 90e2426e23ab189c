"""``nn.LayerNorm`` for the ``"rows"`` strategy: ``∂L_t/∂γ = Σ_rows G_t ⊙ X̂_t / w_t``,
``∂L_t/∂β = Σ_rows G_t / w_t``.

With ``X̂ = (X − mean) · rstd`` (the normalised input of the forward) and ``G`` the output
gradient, ``∂/∂γ = Σ_rows G ⊙ X̂`` and ``∂/∂β = Σ_rows G``. In the fused path the forward is
``torch.native_layer_norm`` (which returns ``mean`` and ``rstd``), so the statistics need no
second normalisation of the input; the input gradient is ``native_layer_norm_backward`` without
its parameter reductions, and ``.grad`` of ``γ`` and ``β`` is the sum of the per-task blocks when
the tasks' rows cover the batch (else the ordinary reduction). The fused path is taken only with
both affine parameters, outside autocast; otherwise the forward-hook path normalises again.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from gradcomp.recorder.rows.blocks import Split
from gradcomp.recorder.rows.hooks import autocast_on
from gradcomp.recorder.rows.registry import Sink, register_rows_module

__all__ = ["FusedLayerNorm", "layernorm_blocks"]


def _sums(g: Tensor, gxhat: Tensor, shape: tuple[int, ...], sp: Split) -> tuple[Tensor, Tensor]:
    """Per-task ``Σ_rows G ⊙ X̂`` and ``Σ_rows G``, each ``[T, *shape]`` in ``sp.dtype``."""
    d, dt, n = math.prod(shape), sp.dtype, sp.n_tasks
    if sp.even:
        gw = sp.by_task(gxhat, d).sum(1, dtype=dt)
        gb = sp.by_task(g, d).sum(1, dtype=dt)
    else:
        gw = torch.stack([gxhat[r].reshape(-1, d).sum(0, dtype=dt) for r in sp.rows])
        gb = torch.stack([g[r].reshape(-1, d).sum(0, dtype=dt) for r in sp.rows])
    if len(shape) == 1:
        return gw, gb
    return gw.reshape(n, *shape), gb.reshape(n, *shape)


def _normalize(module: nn.LayerNorm, x: Tensor, dt: torch.dtype) -> Tensor:
    dims = tuple(range(x.ndim - len(module.normalized_shape), x.ndim))
    xf = x.to(dt)
    mean = xf.mean(dims, keepdim=True)
    var = xf.var(dims, unbiased=False, keepdim=True)
    return (xf - mean) * torch.rsqrt(var + module.eps)


def _fused(sink: Sink, name: str, module: nn.LayerNorm, x: Tensor) -> Tensor | None:
    if module.weight is None or getattr(module, "bias", None) is None or autocast_on(x):
        return None
    held = sink.native(name, module, x)
    if held is not None:  # the C++ function (:mod:`gradcomp.recorder.rows.native`)
        args = (held.slots, held.acc_w, held.acc_b, held.state)
        native_out: Tensor = held.ops.layer_norm(x, module.weight, module.bias, module.eps, *args)
        return native_out
    out: Tensor = FusedLayerNorm.apply(x, module.weight, module.bias, sink, name, module)
    return out


@register_rows_module(nn.LayerNorm, params=lambda m: ("weight", "bias"), fused=_fused)
def layernorm_blocks(module: nn.LayerNorm, x: Tensor, g: Tensor, sp: Split) -> dict[str, Tensor]:
    """Per-task blocks of a LayerNorm from its input ``X`` and output gradient ``G``."""
    g = g.to(sp.dtype)
    gxhat = g * _normalize(module, x, sp.dtype) if "weight" in sp.want else g
    gw, gb = _sums(g, gxhat, tuple(module.normalized_shape), sp)
    return {k: v for k, v in (("weight", gw), ("bias", gb)) if k in sp.want}


class FusedLayerNorm(torch.autograd.Function):
    """``F.layer_norm`` whose backward hands the recorder G and ``G ⊙ X̂`` for the row blocks."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        bias: Tensor,
        sink: Sink,
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
            gxhat = g * torch.sub(x, mean).mul_(rstd)  # (g may be batched under vmap)
            sums = None
            sp = ctx.sink.split(ctx.name, ctx.module, g)
            if sp is not None:
                bw, bb = _sums(g, gxhat, tuple(ctx.shape), sp)
                ctx.sink.add(
                    ctx.name, {k: v for k, v in (("weight", bw), ("bias", bb)) if k in sp.want}
                )
                if sp.full(g.shape[0]):
                    sums = bw.sum(0), bb.sum(0)
            if sums is None:
                lead = tuple(range(g.ndim - len(ctx.shape)))
                sums = gxhat.sum(lead), g.sum(lead)
            if ctx.needs_input_grad[1]:
                gw = sums[0] if sums[0].dtype == weight.dtype else sums[0].to(weight.dtype)
            if ctx.needs_input_grad[2]:
                gb = sums[1] if sums[1].dtype == bias.dtype else sums[1].to(bias.dtype)
        return gx, gw, gb, None, None, None
