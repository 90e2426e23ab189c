"""The forward shared by the fused ``"rows"`` functions of modules with a weight and a bias.

Its subclasses (:class:`~gradcomp.recorder.rows.modules.linear.FusedLinear`,
:class:`~gradcomp.recorder.rows.modules.conv.FusedConv`) differ only in their backward, which
splits the weight and bias gradients into per-task blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from gradcomp.recorder.rows.registry import Sink

__all__ = ["FusedWeightBias"]


class FusedWeightBias(torch.autograd.Function):
    """``op(x, weight, bias)`` that saves ``x``, ``weight`` and the recorder's sink for the
    subclass's backward (which returns one gradient per forward argument: ``None`` for ``sink``,
    ``name``, ``module`` and ``op``)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        sink: Sink,
        name: str,
        module: nn.Module,
        op: Callable[[Tensor, Tensor, Tensor | None], Tensor],
    ) -> Tensor:
        out = op(x, weight, bias)
        ctx.save_for_backward(x, weight)
        ctx.sink, ctx.name, ctx.module = sink, name, module
        ctx.has_bias = bias is not None
        return out
