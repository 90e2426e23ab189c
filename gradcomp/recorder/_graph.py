"""Walk the autograd graph (which leaves a loss reaches); accumulate the training gradient."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["accumulate", "nodes", "reachable_leaves", "reaches"]


def nodes(start: Iterable[Any], stop: Collection[object] = ()) -> Iterator[Any]:
    """Every autograd node that back-propagation from the nodes ``start`` visits, each once.

    The one graph walk (depth first, iterative: no recursion limit on deep graphs); it costs no
    arithmetic.

    Args:
        start: autograd nodes (``tensor.grad_fn``; ``None`` entries are skipped).
        stop: nodes not entered (neither yielded nor walked through).

    Yields:
        The nodes in the order first met.
    """
    stopset = set(stop)
    seen: set[object] = set()
    stack = [fn for fn in start if fn is not None]
    while stack:
        fn = stack.pop()
        if fn in seen or fn in stopset:
            continue
        seen.add(fn)
        yield fn
        stack.extend(n for n, _ in fn.next_functions if n is not None and n not in seen)


def reachable_leaves(roots: Sequence[Tensor], stop: Collection[object] = ()) -> list[Tensor]:
    """The leaf tensors (``AccumulateGrad`` variables) that back-propagation from ``roots`` reaches.

    Walking the graph costs no arithmetic: it visits each autograd node once.

    Args:
        roots: tensors to back-propagate from (losses, or features).
        stop: autograd nodes at which the walk stops (e.g. the ``grad_fn`` of the features).

    Returns:
        The reached leaves, each once, in the order first met.
    """
    found: dict[int, Tensor] = {id(r): r for r in roots if r.grad_fn is None and r.requires_grad}
    for fn in nodes([r.grad_fn for r in roots], stop):
        var = getattr(fn, "variable", None)  # an AccumulateGrad node: a leaf
        if var is not None:
            found.setdefault(id(var), var)
    return list(found.values())


def reaches(roots: Sequence[Tensor], targets: Collection[object]) -> bool:
    """Whether back-propagation from ``roots`` passes through any of the ``targets`` nodes."""
    want = set(targets)
    below = [n for r in roots if r.grad_fn is not None for n, _ in r.grad_fn.next_functions]
    return any(fn in want for fn in nodes(below))


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
