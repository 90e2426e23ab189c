"""The ``"batched"`` strategy: one vmapped vector-Jacobian product over the task losses.

With ``L = (L_1, …, L_T)`` and the identity as T batched cotangents, one
``torch.autograd.grad(L, θ, grad_outputs=I_T, is_grads_batched=True)`` (vmap over the backward
formulas, as TorchJD does) gives the Jacobian rows ``∂L_t/∂θ`` for every leaf θ at once. The
training gradient ``Σ_t w_t ∂L_t/∂θ`` is accumulated into ``.grad``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from gradcomp.recorder._graph import accumulate, reachable_leaves
from gradcomp.recorder.shared import Layout

__all__ = ["batched", "batched_vjp", "stacks_from_jacobian"]


def batched_vjp(
    outputs: Sequence[Tensor],
    inputs: Sequence[Tensor],
    cotangents: Sequence[Tensor],
    weights: Sequence[float],
    train: bool = True,
) -> list[Tensor | None]:
    """One vmapped VJP, and the training gradient from it.

    ``jac[k][t] = Σ_o ⟨cotangents[o][t], ∂outputs[o]/∂inputs[k]⟩``; ``inputs[k].grad`` receives
    ``Σ_t w_t jac[k][t]``.

    Args:
        outputs: tensors to back-propagate from.
        inputs: leaves to differentiate.
        cotangents: for each output, ``[T, *output.shape]``.
        weights: the T loss weights.
        train: accumulate into ``.grad`` (else only compute, and keep the graph).

    Returns:
        For each input, ``[T, *shape]`` (``None`` where the input is not reached).
    """
    jac = torch.autograd.grad(
        list(outputs),
        list(inputs),
        grad_outputs=list(cotangents),
        is_grads_batched=True,
        allow_unused=True,
        retain_graph=not train,
    )
    if not train:
        return list(jac)
    w = torch.tensor(list(weights), dtype=torch.float64)
    totals = [
        None if j is None else torch.tensordot(w.to(j.device, j.dtype), j, dims=1) for j in jac
    ]
    accumulate(inputs, totals)
    return list(jac)


def stacks_from_jacobian(
    layout: Layout, inputs: Sequence[Tensor], jac: Sequence[Tensor | None], n_tasks: int
) -> list[Tensor]:
    """``[T, *shape]`` for each shared parameter, zeros where it was not reached."""
    where = {id(x): k for k, x in enumerate(inputs)}
    out = []
    for p in layout.params:
        k = where.get(id(p))
        j = None if k is None else jac[k]
        out.append(
            torch.zeros((n_tasks, *p.shape), dtype=p.dtype, device=p.device) if j is None else j
        )
    return out


def batched(
    losses: Sequence[Tensor],
    weights: Sequence[float],
    layout: Layout,
    leaves: Sequence[Tensor] | None = None,
    train: bool = True,
) -> list[Tensor]:
    """Per-task gradients of the shared parameters by one batched reverse pass.

    Arguments and result as :func:`gradcomp.recorder.loop.loop` (``train``: accumulate the
    training gradient into ``.grad``); only the computation differs: one reverse pass of the
    stacked losses against the identity as grad outputs.
    """
    dtype = losses[0].dtype
    for loss in losses[1:]:
        dtype = torch.promote_types(dtype, loss.dtype)
    stacked = torch.stack([loss.to(dtype) for loss in losses])
    eye = torch.eye(len(losses), dtype=dtype, device=stacked.device)
    leaves = list(reachable_leaves(losses) if leaves is None else leaves)
    jac = batched_vjp([stacked], leaves, [eye], weights, train)
    return stacks_from_jacobian(layout, leaves, jac, len(losses))
