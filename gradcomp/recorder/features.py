"""The ``"features"`` strategy: heads one task at a time, then one batched VJP through the trunk.

The user says where the shared trunk ends by passing its output(s) ``h`` to
``Recorder.backward(losses, features=h)``. For each task t, one reverse pass through its own head
gives ``c_t = ∂L_t/∂h`` (and the gradients of the head's parameters); then one vmapped VJP of ``h``
with the T cotangents ``(c_1, …, c_T)`` gives ``∂L_t/∂θ = c_t · ∂h/∂θ`` for every trunk leaf θ at
once (TorchJD's ``mtl_backward`` does the same). Exact when every path from a loss to a trunk
parameter passes through ``h``; a parameter used both above and below ``h`` (e.g. tied embeddings)
is refused with a ``ValueError``.

The cotangents ``c_t`` are the per-task gradients at the shared *representation*; their Gram

    ``rep_gram[s, t] = Σ_k ⟨∂L_s/∂h_k, ∂L_t/∂h_k⟩ = Σ_k Σ_rows ⟨∂L_s/∂h_k[row], ∂L_t/∂h_k[row]⟩``

(summed over every element of every features tensor ``h_k``, i.e. over the batch rows and the
feature dimension; the "representation-gradient Gram" of LibMTL's users, cf. Sener & Koltun 2018,
arXiv 1810.04650, MGDA-UB) is returned alongside the parameter gradients at no extra backward.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from gradcomp.gram import gram
from gradcomp.recorder._graph import accumulate, reachable_leaves, reaches
from gradcomp.recorder._inputs import weighted_sum
from gradcomp.recorder.batched import batched_vjp, stacks_from_jacobian
from gradcomp.recorder.shared import Layout

__all__ = ["FeaturesNotApplicable", "as_features", "features", "rep_gram"]


class FeaturesNotApplicable(ValueError):
    """A loss reaches a trunk parameter without passing through the given features."""


def as_features(features: Tensor | Sequence[Tensor]) -> list[Tensor]:
    """Validate ``features=``: one tensor or a sequence of trunk outputs that require grad."""
    feats = [features] if isinstance(features, Tensor) else list(features)
    if not feats or not all(isinstance(f, Tensor) for f in feats):
        raise ValueError("features= must be a tensor (the shared trunk's output) or a list of them")
    for f in feats:
        if f.grad_fn is None:
            raise ValueError(
                "features= must be computed by the shared trunk in this step's forward pass (a "
                "tensor with a grad_fn); got a leaf or a tensor that does not require grad"
            )
    return feats


def rep_gram(cotangents: Sequence[Tensor]) -> Tensor:
    """Gram ``[T, T]`` of the per-task gradients at the features.

    ``rep_gram[s, t] = Σ_k ⟨c_s^k, c_t^k⟩`` for ``c_t^k = ∂L_t/∂h_k``, the inner product taken
    over every element of ``h_k`` (batch rows and feature dimensions); accumulated in float32 at
    least (float64 for float64 features).

    Args:
        cotangents: per features tensor ``h_k``, its stacked per-task gradients ``[T, *h_k.shape]``.
    """
    total = None
    for c in cotangents:
        g = gram(c.detach().reshape(c.shape[0], -1))
        total = g if total is None else total + g.to(total.dtype)
    assert total is not None
    return total


def features(
    losses: Sequence[Tensor],
    weights: Sequence[float],
    layout: Layout,
    feats: Sequence[Tensor],
    leaves: Sequence[Tensor],
    train: bool = True,
    check: bool = True,
) -> tuple[list[Tensor], Tensor]:
    """Per-task gradients of the shared parameters via the trunk output ``feats``.

    Args:
        losses: the T scalar task losses.
        weights: their loss weights.
        layout: the shared parameters.
        feats: the trunk output(s) every loss depends on the trunk through.
        leaves: every leaf the losses may reach (trainable parameters and other leaves).
        train: accumulate the training gradient into ``.grad``.
        check: walk the whole graph to verify that the features cut it (the recorder does this
            on the first ``features`` step; the walk costs as much Python time as the graph is
            large).

    Returns:
        ``([T, *shape] per shared parameter, rep_gram [T, T])`` (:func:`rep_gram` of the
        per-task gradients at ``feats``); ``.grad`` has received the training gradient.
    """
    n_tasks = len(losses)
    stop = {f.grad_fn for f in feats}
    if check and len(feats) > 1 and reaches(feats, stop):
        raise FeaturesNotApplicable(
            "strategy 'features': one features= tensor is computed from another; pass only the "
            "outermost trunk outputs the heads read (nested features would be counted twice)"
        )
    trunk_ids = {id(x) for x in reachable_leaves(feats)} if check else set()
    heads: dict[int, Tensor] = {}
    head_grads: list[dict[int, Tensor]] = []
    cotangents: list[list[Tensor]] = []
    for loss in losses:
        above = reachable_leaves([loss], stop=stop)
        both = [x for x in above if id(x) in trunk_ids]
        if both:
            names = [
                layout.names[i] for i, p in enumerate(layout.params) if any(p is b for b in both)
            ]
            raise FeaturesNotApplicable(
                f"strategy 'features': {len(both)} parameter(s) {names[:3]} are used both above "
                "and below features= (e.g. tied weights or a skip around the features); pass every "
                "tensor the heads read from the trunk, or use strategy='batched'"
            )
        grads = torch.autograd.grad(loss, [*feats, *above], retain_graph=True, allow_unused=True)
        if loss.grad_fn in stop or (not above and all(g is None for g in grads)):
            raise FeaturesNotApplicable(
                "strategy 'features': a task loss does not reach features= through the autograd "
                "graph (under torch.compile the losses and features= come out of one compiled "
                "node); compile only the trunk, or use strategy='loop'"
            )
        cotangents.append(
            [torch.zeros_like(f) if g is None else g for f, g in zip(feats, grads, strict=False)]
        )
        head_grads.append(
            {id(x): g for x, g in zip(above, grads[len(feats) :], strict=True) if g is not None}
        )
        heads.update({id(x): x for x in above})
    head_leaves = list(heads.values())
    per_head = [[hg.get(id(x)) for hg in head_grads] for x in head_leaves]
    if train:
        accumulate(head_leaves, [weighted_sum(weights, gs) for gs in per_head])
    stacked = [torch.stack([c[k] for c in cotangents]) for k in range(len(feats))]
    trunk = [x for x in leaves if id(x) not in heads]
    jac = batched_vjp(feats, trunk, stacked, weights, train) if trunk else []
    stacks = stacks_from_jacobian(layout, trunk, jac, n_tasks)
    head_index = {id(x): k for k, x in enumerate(head_leaves)}
    for i, p in enumerate(layout.params):
        k = head_index.get(id(p))
        if k is not None:  # a shared parameter above the features (e.g. a head two tasks share)
            stacks[i] = torch.stack(
                [torch.zeros_like(p) if g is None else g for g in per_head[k]]
            ).to(stacks[i].dtype)
    return stacks, rep_gram(stacked)
