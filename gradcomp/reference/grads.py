"""Obviously correct, but slow: per-task gradients and their Grams, for the recorder's tests.

One ``torch.autograd.grad`` per task and Python loops over task pairs and units; no batching, no
hooks, no shortcuts. Use in float64. (The Cockpit / BackPACK habit: ship the slow reference with
the package, so anyone can check a result.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["gram_reference", "layer_grams", "per_task_gradients", "unit_gram_reference"]


def per_task_gradients(losses: Sequence[Tensor], params: Sequence[Tensor]) -> list[list[Tensor]]:
    """``grads[t][k] = ∂losses[t]/∂params[k]`` (zeros where the loss does not reach the parameter).

    Args:
        losses: scalar losses (graphs are retained, so the caller can still back-propagate).
        params: tensors that require grad.

    Returns:
        Per task, per parameter, the gradient.
    """
    out = []
    for loss in losses:
        gs = torch.autograd.grad(loss, list(params), retain_graph=True, allow_unused=True)
        out.append(
            [
                torch.zeros_like(p) if g is None else g.detach()
                for p, g in zip(params, gs, strict=True)
            ]
        )
    return out


def gram_reference(
    grads: Sequence[Sequence[Tensor]], members: Sequence[int] | None = None
) -> np.ndarray:
    """``gram[t, s] = Σ_{k ∈ members} Σ_i grads[t][k]_i grads[s][k]_i`` by a loop over pairs.

    Args:
        grads: ``grads[t][k]`` from :func:`per_task_gradients`.
        members: the parameter indices of one layer (default: all of them).

    Returns:
        ``[T, T]`` float64 array.
    """
    n = len(grads)
    ks = range(len(grads[0])) if members is None else members
    out = np.zeros((n, n))
    for t in range(n):
        for s in range(n):
            out[t, s] = sum(float((grads[t][k].double() * grads[s][k].double()).sum()) for k in ks)
    return out


def unit_gram_reference(
    grads: Sequence[Sequence[Tensor]], members: Sequence[int], n_units: int
) -> np.ndarray:
    """Per-unit Gram of a Linear layer: unit o keeps row o of every member (weight row, bias entry).

    Args:
        grads: ``grads[t][k]``.
        members: the parameter indices of the layer (its weight and bias).
        n_units: the layer's output features.

    Returns:
        ``[n_units, T, T]`` float64 array.
    """
    n = len(grads)
    out = np.zeros((n_units, n, n))
    for o in range(n_units):
        for t in range(n):
            for s in range(n):
                out[o, t, s] = sum(
                    float((grads[t][k][o].double() * grads[s][k][o].double()).sum())
                    for k in members
                )
    return out


def layer_grams(
    losses: Mapping[str, Tensor],
    named_params: Mapping[str, Tensor],
    layers: Mapping[str, Sequence[str]],
) -> dict[str, np.ndarray]:
    """Per-layer Grams of per-task gradients, plus ``"all"`` (every listed parameter).

    Args:
        losses: task -> scalar loss (task order = mapping order).
        named_params: parameter name -> tensor (the shared parameters).
        layers: layer name -> parameter names.

    Returns:
        layer name -> ``[T, T]``.
    """
    names = list(named_params)
    grads = per_task_gradients(list(losses.values()), [named_params[n] for n in names])
    out = {k: gram_reference(grads, [names.index(n) for n in v]) for k, v in layers.items()}
    out["all"] = gram_reference(grads)
    return out
