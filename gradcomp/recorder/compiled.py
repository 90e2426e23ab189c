"""The recorder under ``torch.compile``: detecting compiled code, and finding shared parameters.

A compiled forward (AOTAutograd, any backend but ``"eager"``) is one autograd node,
``CompiledFunctionBackward``, whose inputs are every parameter the graph reads. Walking the
autograd graph from a task loss then reaches every parameter of the compiled region (heads
included), so under compile ``shared=None`` finds the shared parameters by their gradients
instead: on the first recorded step, one ``torch.autograd.grad`` per task (``allow_unused=True``,
``materialize_grads=False``); parameter θ is reached by task t iff ``∂L_t/∂θ`` is not ``None`` and
not exactly zero everywhere, and shared iff reached by two or more tasks. A parameter whose
gradient is exactly zero for every task on that step (e.g. LoRA's ``A`` while ``B`` is still
zero) cannot be classified and is reported with a :class:`CompiledSharingWarning`.

Only ``"loop"`` is known to run under every backend: the inductor backward cannot be vmapped
(``is_grads_batched``), and the ``"rows"`` hooks are traced into (or bypassed by) the compiled
graph. ``"auto"`` therefore picks ``"loop"`` under compile.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from gradcomp.recorder._graph import nodes

__all__ = [
    "CompiledSharingWarning",
    "check_reached",
    "compiled_error",
    "discover_shared_by_grad",
    "has_compiled_node",
    "is_compiled",
    "rows_error",
]

#: the attribute ``torch.compile``'s ``OptimizedModule`` keeps the original module under
ORIG_MOD = "_orig_mod"


class CompiledSharingWarning(UserWarning):
    """Under ``torch.compile`` some parameters got an exactly zero gradient from every task on the
    first step, so ``shared=None`` could not tell whether they are shared."""


def is_compiled(model: nn.Module) -> bool:
    """Whether ``model`` or one of its submodules is compiled (``torch.compile(m)`` or
    ``m.compile()``)."""
    for m in model.modules():
        if hasattr(m, ORIG_MOD) and isinstance(getattr(m, ORIG_MOD), nn.Module):
            return True
        if getattr(m, "_compiled_call_impl", None) is not None:
            return True
    return False


def has_compiled_node(roots: Sequence[Tensor]) -> bool:
    """Whether back-propagation from ``roots`` passes through a compiled (AOTAutograd) node."""
    return any(
        type(fn).__name__.startswith("CompiledFunction") for fn in nodes(r.grad_fn for r in roots)
    )


def discover_shared_by_grad(
    named: Mapping[str, Tensor], losses: Mapping[str, Tensor]
) -> tuple[list[str], dict[str, set[str]]]:
    """Shared parameters found from the per-task gradients (one reverse pass per task).

    Args:
        named: qualified name -> parameter, in model order.
        losses: task -> scalar loss, graphs alive (they are retained).

    Returns:
        The names (model order) of parameters with a non-zero gradient from two or more tasks,
        and for each task the names it reaches (non-zero gradient).
    """
    names = [n for n, p in named.items() if p.requires_grad]
    params = [named[n] for n in names]
    reached: dict[str, set[str]] = {}
    zero: set[str] = set(names)
    for task, loss in losses.items():
        grads = torch.autograd.grad(
            loss, params, retain_graph=True, allow_unused=True, materialize_grads=False
        )
        hit = set()
        for n, g in zip(names, grads, strict=True):
            if g is None:
                zero.discard(n)  # not in the graph: certainly not reached
            elif bool(g.ne(0).any()):  # NaN counts as reached
                hit.add(n)
        reached[task] = hit
        zero -= hit
    count = {n: sum(n in r for r in reached.values()) for n in names}
    if zero and any(count[n] >= 2 for n in names):
        warnings.warn(
            f"torch.compile: {len(zero)} parameter(s) {sorted(zero)[:3]} received an exactly zero "
            "gradient from every task on the first step (e.g. LoRA A while B is zero), so "
            "shared=None does not count them as shared; pass shared= to include them",
            CompiledSharingWarning,
            stacklevel=4,
        )
    found = [n for n in names if count[n] >= 2]
    if not found:
        raise ValueError(
            "no shared parameters: under torch.compile no parameter received a non-zero gradient "
            "from two or more tasks on the first step. Check the task losses, or pass shared= "
            "explicitly"
        )
    return found, reached


def check_reached(reached: Mapping[str, set[str]], shared: Sequence[str]) -> None:
    """Raise a ``ValueError`` for a task with no non-zero gradient on any shared parameter."""
    for task, names in reached.items():
        if not names.intersection(shared):
            raise ValueError(
                f"task {task!r} reaches no shared parameter: under torch.compile its gradient on "
                "every shared parameter is exactly zero on the first step. Check the task's loss, "
                "or pass shared= explicitly if that zero is only initial (e.g. a zero-initialised "
                "head)"
            )


def rows_error() -> ValueError:
    """The error for ``strategy="rows"`` on a compiled model."""
    return ValueError(
        "strategy='rows' cannot run under torch.compile: its forward hooks and Linear "
        "replacement are traced into (or bypassed by) the compiled graph, so its per-task Grams "
        "would be wrong. Use strategy='loop' (exact under compile; 'auto' picks it)"
    )


def compiled_error(strategy: str, err: Exception) -> ValueError:
    """The error for a strategy that failed under ``torch.compile``."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ValueError(
        f"strategy={strategy!r} cannot run on this torch.compile'd model ({first}): the compiled "
        "backward cannot be vmapped (is_grads_batched), e.g. with the inductor backend. Use "
        "strategy='loop' (exact under compile; 'auto' picks it) or compile with "
        "backend='aot_eager'"
    )
