"""Which module types ``"rows"`` can split, and how: one :class:`RowsModule` entry per type.

As Opacus' ``register_grad_sampler`` (Yousefpour et al., 2021, "Opacus: User-Friendly
Differential Privacy Library in PyTorch"), a module type is added in one place, by decorating its
block function::

    @register_rows_module(nn.Linear, params=lambda m: ("weight", "bias"))
    def linear_blocks(module, x, g, split): ...  # {"weight": [T, out, in], "bias": [T, out]}

An entry says which parameters it covers (``params(module)``, ``()`` for an instance it cannot
split: that module's parameters take the vmapped fallback), how to compute the per-task blocks
from the module's input ``X`` and output gradient ``G`` (captured by a forward hook), and
optionally a fused path (an ``autograd.Function`` installed as the instance ``forward`` of a module
whose class ``forward`` is the registered one, whose backward forms ``.grad`` as the sum of the
blocks: no extra product). Lookup walks the module's MRO, so subclasses use their base's entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from torch import Tensor, nn

from gradcomp.recorder.rows.blocks import Split
from gradcomp.recorder.rows.native import Holders

__all__ = [
    "BlocksFn",
    "RowsModule",
    "Sink",
    "lookup",
    "register_rows_module",
    "registered",
    "supported",
]

#: ``blocks(module, x, g, split) -> {param name: [T, *shape] tensor}``: per-task sums over the
#: task's rows (unscaled: ``w_t ∂L_t/∂θ``) of the parameters in ``split.want``. A value may instead
#: be a list that the entry's ``finish`` turns into the ``[T, ...]`` tensor once all calls arrived.
BlocksFn = Callable[[Any, Tensor, Tensor, Split], dict[str, Any]]


class Sink(Protocol):
    """What a fused backward talks to (:class:`gradcomp.recorder.rows.hooks.RowsHooks`)."""

    def split(self, name: str, module: nn.Module, g: Tensor) -> Split | None:
        """The tasks' rows for this module call, or ``None`` when it is not split this step."""
        ...

    def add(self, name: str, new: dict[str, Any]) -> None:
        """Record one call's per-task blocks."""
        ...

    def native(self, name: str, module: nn.Module, x: Tensor) -> Holders | None:
        """The holders of a C++ call of this module (:mod:`gradcomp.recorder.rows.native`), or
        ``None`` when the Python function runs."""
        ...


#: ``fused(sink, name, module, x) -> output``, or ``None`` when the fused path does not apply to
#: this call (the hooks then run the class forward and capture by forward hook).
FusedFn = Callable[[Sink, str, Any, Tensor], Tensor | None]


@dataclass(frozen=True)
class RowsModule:
    """How ``"rows"`` splits one module type.

    Attributes:
        cls: the registered type.
        params: ``params(module)``: names of the parameters whose per-task gradients it computes
            (``()``: this instance is not supported).
        blocks: the per-task blocks from input and output gradient (forward-hook path).
        fused: optional fused path, used only for modules whose ``type(m).forward`` is
            ``cls.forward`` and that have no instance ``forward`` of their own.
        finish: turns an accumulated list value of ``blocks`` into ``[T, ...]`` (sparse entries).
        lead: the batch size of one call's input (``-1``: not batched; the module's parameters
            then take the fallback).
    """

    cls: type[nn.Module]
    params: Callable[[Any], tuple[str, ...]]
    blocks: BlocksFn
    fused: FusedFn | None = None
    finish: Callable[[Any], Tensor] | None = None
    lead: Callable[[Any, Tensor], int] | None = None

    def batch_size(self, module: nn.Module, x: Tensor) -> int:
        """Leading size of one call's input."""
        if self.lead is not None:
            return self.lead(module, x)
        return int(x.shape[0]) if x.ndim else 0

    def fusable(self, module: nn.Module) -> bool:
        """Whether the fused path may be installed on ``module``: never over an existing instance
        ``forward`` (accelerate's hooks live there) or a subclass's own ``forward``."""
        return (
            self.fused is not None
            and "forward" not in module.__dict__
            and type(module).forward is self.cls.forward
        )


_REGISTRY: dict[type[nn.Module], RowsModule] = {}


def register_rows_module(
    *types: type[nn.Module],
    params: Callable[[Any], tuple[str, ...]],
    fused: FusedFn | None = None,
    finish: Callable[[Any], Tensor] | None = None,
    lead: Callable[[Any, Tensor], int] | None = None,
) -> Callable[[BlocksFn], BlocksFn]:
    """Decorator registering a block function for one or more module types (replacing earlier
    entries of the same types).

    Args:
        types: the module classes.
        params: supported parameter names of an instance (``()``: unsupported instance).
        fused: optional fused path (see :class:`RowsModule`).
        finish: optional conversion of accumulated list values.
        lead: optional batch size of an input (default: ``x.shape[0]``).

    Returns:
        The decorator; it returns the block function unchanged.
    """
    if not types or not all(isinstance(t, type) and issubclass(t, nn.Module) for t in types):
        raise TypeError(f"register_rows_module needs nn.Module subclasses, got {types!r}")

    def deco(fn: BlocksFn) -> BlocksFn:
        for t in types:
            _REGISTRY[t] = RowsModule(t, params, fn, fused, finish, lead)
        return fn

    return deco


def lookup(module: nn.Module) -> RowsModule | None:
    """The entry of the nearest registered class in ``type(module).__mro__``, or ``None``."""
    for cls in type(module).__mro__:
        entry = _REGISTRY.get(cls)
        if entry is not None:
            return entry
    return None


def registered() -> tuple[type[nn.Module], ...]:
    """The registered module types."""
    return tuple(_REGISTRY)


def supported(module: nn.Module) -> tuple[str, ...]:
    """Names of the parameters of ``module`` whose per-task gradients the hooks compute."""
    entry = lookup(module)
    return entry.params(module) if entry is not None else ()
