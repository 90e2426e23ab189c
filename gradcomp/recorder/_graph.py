"""Walk the autograd graph (which leaves a loss reaches); accumulate the training gradient."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch
from torch import Tensor

__all__ = ["accumulate", "reachable_leaves", "reaches"]


def reachable_leaves(roots: Sequence[Tensor], stop: Collection[object] = ()) -> list[Tensor]:
    """The leaf tensors (``AccumulateGrad`` variables) that back-propagation from ``roots`` reaches.

    Walking the graph costs no arithmetic: it visits each autograd node once.

    Args:
        roots: tensors to back-propagate from (losses, or features).
        stop: autograd nodes at which the walk stops (e.g. the ``grad_fn`` of the features).

    Returns:
        The reached leaves, each once, in the order first met.
    """
    seen: set[object] = set()
    found: dict[int, Tensor] = {}
    stack = []
    for r in roots:
        if r.grad_fn is not None:
            stack.append(r.grad_fn)
        elif r.requires_grad:
            found.setdefault(id(r), r)
    stopset = set(stop)
    while stack:
        fn = stack.pop()
        if fn in seen or fn in stopset:
            continue
        seen.add(fn)
        var = getattr(fn, "variable", None)
        if var is not None:
            found.setdefault(id(var), var)
            continue
        for nxt, _ in fn.next_functions:
            if nxt is not None and nxt not in seen:
                stack.append(nxt)
    return list(found.values())


def reaches(roots: Sequence[Tensor], targets: Collection[object]) -> bool:
    """Whether back-propagation from ``roots`` passes through any of the ``targets`` nodes."""
    want = set(targets)
    seen: set[object] = set()
    stack = [n for r in roots if r.grad_fn is not None for n, _ in r.grad_fn.next_functions]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        if fn in want:
            return True
        seen.add(fn)
        stack.extend(n for n, _ in fn.next_functions)
    return False


def accumulate(leaves: Sequence[Tensor], grads: Sequence[Tensor | None]) -> None:
    """Add ``grads`` into ``leaf.grad`` the way ``Tensor.backward`` accumulates.

    Args:
        leaves: leaf tensors that require grad.
        grads: their gradients (``None``: nothing reached the leaf).
    """
    with torch.no_grad():
        for leaf, g in zip(leaves, grads, strict=True):
            if g is None:
                continue
            g = g.to(leaf.dtype)
            if leaf.grad is None:
                leaf.grad = g if g.shape == leaf.shape else g.reshape(leaf.shape)
            else:
                leaf.grad.add_(g)
