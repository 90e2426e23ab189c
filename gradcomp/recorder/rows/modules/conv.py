"""``nn.Conv1d`` and ``nn.Conv2d`` for the ``"rows"`` strategy.

A convolution's weight gradient is a sum over samples, ``∂/∂W = Σ_n ∇_W(G_n, X_n)`` (for 2-D,
``∂/∂W[o, c, i, j] = Σ_n Σ_{h,w} G[n, o, h, w] · X_pad[n, c, s·h + d·i, s·w + d·j]``), so a task
that owns batch rows R_t has ``w_t ∂L_t/∂W = ∇_W(G_{R_t}, X_{R_t})`` and
``w_t ∂L_t/∂b = Σ_{n∈R_t, h, w} G[n, :, h, w]``. Each block is one
``aten.convolution_backward`` on the task's sample slice, so the T blocks together cost about
one weight gradient; in the fused path ``.grad`` is their sum (the input gradient is the ordinary
one), so splitting costs no extra weight gradient.

Supported: any stride, dilation, groups and bias, numeric padding or ``"valid"``, and ``"same"``
when the padding is symmetric (``dilation · (kernel − 1)`` even in every dimension), batched
input. Not supported (the module's parameters take the vmapped fallback): ``padding_mode`` other
than ``"zeros"``, asymmetric ``"same"`` padding, unbatched input; transposed convolutions and
``nn.Conv3d`` are not registered. Under autocast the forward-hook path is taken.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from gradcomp.recorder.rows.blocks import Split
from gradcomp.recorder.rows.fused import FusedWeightBias
from gradcomp.recorder.rows.hooks import autocast_on
from gradcomp.recorder.rows.registry import Sink, register_rows_module

__all__ = ["FusedConv", "conv_blocks", "conv_padding"]

Conv = nn.Conv1d | nn.Conv2d


def conv_padding(module: Conv) -> tuple[int, ...] | None:
    """The module's padding as numbers per spatial dimension, or ``None`` if unsupported."""
    if module.padding_mode != "zeros":
        return None
    pad = module.padding
    if pad == "valid":
        return (0,) * len(module.kernel_size)
    if pad == "same":
        total = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size, strict=True)]
        return None if any(t % 2 for t in total) else tuple(t // 2 for t in total)
    return tuple(int(p) for p in pad)


def _params(module: Conv) -> tuple[str, ...]:
    return ("weight", "bias") if conv_padding(module) is not None else ()


def _lead(module: Conv, x: Tensor) -> int:
    return int(x.shape[0]) if x.ndim == len(module.kernel_size) + 2 else -1


def _backward(
    module: Conv, x: Tensor, g: Tensor, weight: Tensor, mask: tuple[bool, bool, bool]
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """``aten.convolution_backward``: (input, weight, bias) gradients where ``mask`` says."""
    pad = conv_padding(module)
    assert pad is not None
    k = len(module.kernel_size)
    bias_sizes = [weight.shape[0]] if mask[2] else None
    out: tuple[Tensor | None, Tensor | None, Tensor | None] = torch.ops.aten.convolution_backward(
        g, x, weight, bias_sizes, list(module.stride), list(pad), list(module.dilation),
        False, [0] * k, module.groups, list(mask),
    )  # fmt: skip
    return out


def _split(
    module: Conv, x: Tensor, g: Tensor, weight: Tensor, sp: Split, want_w: bool, want_b: bool
) -> tuple[Tensor | None, Tensor | None]:
    """Per-task weight ``[T, *w.shape]`` and bias ``[T, out]`` gradients, in ``x``'s dtype."""
    ws: list[Tensor] = []
    bs: list[Tensor] = []
    for r in sp.rows:
        xt, gt = x[r], g[r]
        if not xt.shape[0]:  # a task with no rows this step
            if want_w:
                ws.append(torch.zeros_like(weight))
            if want_b:
                bs.append(weight.new_zeros(weight.shape[0]))
            continue
        _, gw, gb = _backward(module, xt, gt, weight, (False, want_w, want_b))
        if want_w:
            assert gw is not None
            ws.append(gw)
        if want_b:
            assert gb is not None
            bs.append(gb)
    return (torch.stack(ws) if want_w else None), (torch.stack(bs) if want_b else None)


def _fused(sink: Sink, name: str, module: Conv, x: Tensor) -> Tensor | None:
    if _lead(module, x) < 0 or autocast_on(x):
        return None
    out: Tensor = FusedConv.apply(
        x, module.weight, module.bias, sink, name, module, module._conv_forward
    )
    return out


@register_rows_module(nn.Conv1d, nn.Conv2d, params=_params, fused=_fused, lead=_lead)
def conv_blocks(module: Conv, x: Tensor, g: Tensor, sp: Split) -> dict[str, Tensor]:
    """Per-task blocks of a convolution from its input ``X`` and output gradient ``G``."""
    dt = sp.dtype
    w, b = _split(
        module, x.to(dt), g.to(dt), module.weight.detach().to(dt), sp,
        "weight" in sp.want, "bias" in sp.want,
    )  # fmt: skip
    return {k: v for k, v in (("weight", w), ("bias", b)) if v is not None}


class FusedConv(FusedWeightBias):
    """The module's convolution whose backward forms the weight and bias gradients as sums of
    the per-task blocks."""

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        module = ctx.module
        need_x = ctx.needs_input_grad[0]
        need_w = ctx.needs_input_grad[1]
        need_b = ctx.has_bias and ctx.needs_input_grad[2]
        g = g.contiguous()
        gw = gb = None
        sp = ctx.sink.split(ctx.name, module, g) if need_w or need_b else None
        if sp is not None:
            bw, bb = _split(module, x, g, weight, sp, need_w, need_b)
            new = {k: v for k, v in (("weight", bw), ("bias", bb)) if v is not None}
            ctx.sink.add(ctx.name, {k: v.to(sp.dtype) for k, v in new.items() if k in sp.want})
            if sp.full(g.shape[0]):
                gw = None if bw is None else bw.sum(0)
                gb = None if bb is None else bb.sum(0)
        rest = (need_x, need_w and gw is None, need_b and gb is None)
        gx = None
        if any(rest):
            gx, w2, b2 = _backward(module, x, g, weight, rest)
            gw = w2 if gw is None else gw
            gb = b2 if gb is None else gb
        return gx, gw, gb, None, None, None, None
