"""Reduce per-task gradients to Gram statistics (per parameter, per layer, per unit).

For tasks t, s and a layer with parameters P, the Gram entry is
``gram[t, s] = Σ_{p ∈ P} ⟨g_t^p, g_s^p⟩`` where ``g_t^p = ∂L_t/∂p`` (the per-task gradient of the
unweighted loss). For a shared ``nn.Linear`` with weight ``W`` (out × in) and bias ``b``, unit ``o``
keeps ``Σ_i g_t[W_oi] g_s[W_oi] + g_t[b_o] g_s[b_o]`` (the neuron's incoming weights and bias).
Statistics are accumulated in float32 at least (float64 for float64 parameters).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from gradcomp.gram import acc_dtype, gram, unit_gram, with_total
from gradcomp.recorder.shared import Layout

__all__ = ["ParamStats", "acc_dtype", "from_stacks", "layer_stats", "param_stats", "to_layers"]


@dataclass
class ParamStats:
    """Per-parameter statistics of one recorded step.

    Attributes:
        gram: ``[P, T, T]`` Gram matrix of each shared parameter's per-task gradients.
        units: for each parameter, ``[units, T, T]`` per-unit Grams, or ``None``
            (no units, or units not asked for).
    """

    gram: Tensor
    units: list[Tensor | None] | None


def from_stacks(stacks: Sequence[Tensor], layout: Layout, units: bool) -> ParamStats:
    """Gram statistics from stacked per-task gradients.

    Args:
        stacks: for each shared parameter (layout order), its per-task gradients ``[T, *shape]``.
        layout: the shared parameters and their grouping.
        units: also compute per-unit Grams of Linear-owned parameters.

    Returns:
        The :class:`ParamStats`.
    """
    grams, unit_grams = [], []
    for p, stack in enumerate(stacks):
        gram, unit = param_stats(stack, layout.units[p] if units else 0)
        grams.append(gram)
        unit_grams.append(unit)
    return ParamStats(torch.stack(grams), unit_grams if units else None)


def param_stats(stack: Tensor, n_units: int) -> tuple[Tensor, Tensor | None]:
    """Gram ``[T, T]`` of one parameter's per-task gradients ``[T, *shape]``, and with
    ``n_units > 0`` the per-unit Grams ``[n_units, T, T]`` (unit = index along ``shape[0]``)."""
    flat = stack.reshape(stack.shape[0], -1)
    if not n_units:
        return gram(flat), None
    return gram(flat), unit_gram(stack.reshape(stack.shape[0], n_units, -1))


def layer_stats(
    stacks: Sequence[Tensor], layout: Layout, units: bool
) -> tuple[Tensor, Tensor | None]:
    """Layer Grams straight from stacked per-task gradients (one matmul per layer).

    Same result as ``to_layers(from_stacks(stacks, layout, units), layout)``.

    Args:
        stacks: ``[T, *shape]`` per shared parameter (layout order).
        layout: the grouping.
        units: also compute ``unit_gram``.

    Returns:
        ``gram [L + 1, T, T]`` and ``unit_gram [L + 1, U, T, T]`` or ``None``.
    """
    if not layout.members:
        raise ValueError("no layers to record")
    layers = with_total(torch.stack([gram([stacks[i] for i in idx]) for idx in layout.members]))
    if not units:
        return layers, None
    unit_grams: list[Tensor | None] = [
        param_stats(s, layout.units[i])[1] if layout.units[i] else None
        for i, s in enumerate(stacks)
    ]
    return to_layers(ParamStats(layers[:1], unit_grams), layout, gram=layers)


@functools.lru_cache(maxsize=16)
def _member_index(
    members: tuple[tuple[int, ...], ...], device: torch.device
) -> tuple[Tensor, Tensor]:
    """Each member's layer and parameter index, for :func:`to_layers`'s ``index_add_`` (made once
    per layout and device: a recorder calls it every recorded step)."""
    rows = torch.tensor([k for k, idx in enumerate(members) for _ in idx], device=device)
    cols = torch.tensor([i for idx in members for i in idx], device=device)
    return rows, cols


@functools.lru_cache(maxsize=16)
def _uniform(members: tuple[tuple[int, ...], ...]) -> int:
    """The common size of the layers when layer k holds exactly the parameters
    ``[k·size, (k+1)·size)`` in order, else 0."""
    size = len(members[0]) if members else 0
    for k, idx in enumerate(members):
        if idx != tuple(range(k * size, (k + 1) * size)):
            return 0
    return size


def to_layers(
    stats: ParamStats, layout: Layout, gram: Tensor | None = None
) -> tuple[Tensor, Tensor | None]:
    """Sum per-parameter statistics into layers, and add the ``"all"`` entry.

    Args:
        stats: per-parameter statistics.
        layout: the grouping.
        gram: the layer Grams if already known (then ``stats.gram`` is not used).

    Returns:
        ``gram`` ``[L + 1, T, T]`` and, with units, ``unit_gram`` ``[L + 1, U, T, T]``
        where U is the largest unit count; entries without units are NaN.
    """
    if gram is None:  # sums over each layer's members (a NaN stays in its own layers)
        t = stats.gram.shape[-1]
        size = _uniform(layout.members)
        if size and size * len(layout.members) == stats.gram.shape[0]:
            # layer k holds parameters [k·size, (k+1)·size): one reduction
            layers = stats.gram.reshape(len(layout.members), size, t, t).sum(1)
        else:
            rows, cols = _member_index(layout.members, stats.gram.device)
            layers = stats.gram.new_zeros((len(layout.members), t, t))
            layers.index_add_(0, rows, stats.gram[cols])
        gram = torch.cat([layers, stats.gram.sum(0, keepdim=True)])
    if stats.units is None:
        return gram, None
    n_units = max(layout.layer_units, default=0)
    t = gram.shape[-1]
    unit = torch.full(
        (len(layout.members) + 1, max(n_units, 1), t, t),
        float("nan"),
        dtype=gram.dtype,
        device=gram.device,
    )
    for k, idx in enumerate(layout.members):
        u = layout.layer_units[k]
        parts = [stats.units[i] for i in idx]
        if u and all(x is not None for x in parts):
            unit[k, :u] = torch.stack([x for x in parts if x is not None]).sum(0)
    return gram, unit
