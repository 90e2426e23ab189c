"""What the generic ensemble trainer needs to know about a model: a :class:`Problem`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from gradcomp.gram import gram, unit_gram

__all__ = ["Problem", "per_task_stats"]

Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Problem:
    """A multi-task model written functionally, for one run (one seed, one setting).

    Attributes:
        task_losses: ``(params, data) -> (T,)`` tensor of each task's unweighted loss.
        metrics: ``(params, data) -> {name: (T,) tensor}`` read at traced steps (e.g. accuracy,
            the ±1 outcome); may return an empty dict.
        layers: shared-parameter groups, ``{"hidden": ("W1", "b1")}``; the Gram statistics are
            reported per group and for ``"all"`` (every shared parameter as one vector). Axis 0
            of a shared parameter is its unit axis (output row), used for ``unit_gram``.
        weights: per-task loss weights of the training objective Σ w_t L_t (default all 1).
    """

    task_losses: Callable[[Params, Mapping[str, torch.Tensor]], torch.Tensor]
    metrics: Callable[[Params, Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]
    layers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    weights: tuple[float, ...] | None = None

    def objective(self, params: Params, data: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The training loss Σ_t w_t L_t."""
        losses = self.task_losses(params, data)
        if self.weights is None:
            return losses.sum()
        return (
            torch.as_tensor(self.weights, dtype=losses.dtype, device=losses.device) * losses
        ).sum()

    def layer_names(self) -> list[str]:
        """Names of the Gram layers: the groups, then ``"all"``."""
        return [*self.layers, "all"]


def per_task_stats(
    problem: Problem, grads: Mapping[str, torch.Tensor], units: bool
) -> dict[str, torch.Tensor]:
    """Gram statistics of per-task gradients of the shared parameters, for one run.

    ``gram[l, i, j] = ⟨g_i, g_j⟩`` over the parameters of layer ``l``;
    ``unit_gram[l, u, i, j]`` restricts the sum to unit ``u`` (row ``u`` of each parameter).

    Args:
        problem: gives the layers.
        grads: ``{name: (T, *shape)}`` per-task gradients of each shared parameter.
        units: also return ``unit_gram`` (all shared parameters must have the same row count).

    Returns:
        ``{"gram": (L, T, T)}`` and, with ``units``, ``{"unit_gram": (L, U, T, T)}``.
    """
    grams, unit_grams = [], []
    all_names = [n for names in problem.layers.values() for n in names]
    for names in [*problem.layers.values(), tuple(dict.fromkeys(all_names))]:
        grams.append(gram([grads[n] for n in names]))
        if units:
            unit_grams.append(unit_gram(torch.cat([_rows(grads[n]) for n in names], dim=2)))
    out = {"gram": torch.stack(grams)}
    if units:
        out["unit_gram"] = torch.stack(unit_grams)
    return out


def _rows(g: torch.Tensor) -> torch.Tensor:
    """``(T, U, *rest)`` -> ``(T, U, D)``: one row of parameters per unit."""
    return g.reshape(g.shape[0], g.shape[1], -1)
