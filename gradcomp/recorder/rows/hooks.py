"""The hooks of the ``"rows"`` strategy: capture the shared modules' calls in forward, reduce
their per-task blocks to Gram entries as each module's gradient arrives in the one backward.

Each shared module is split by its :mod:`registry <gradcomp.recorder.rows.registry>` entry: the
fused path (an instance ``forward`` running the entry's ``autograd.Function``) when the module has
no instance ``forward`` of its own and its class ``forward`` is the registered one, else a forward
hook that keeps the input and registers a hook on the output's gradient. An existing instance
``forward`` (accelerate's hooks, a user's wrapper) is never overwritten.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from gradcomp.gram import acc_dtype, unit_gram
from gradcomp.recorder.rows.blocks import Split, Step, wanted
from gradcomp.recorder.rows.cgram import block_gram
from gradcomp.recorder.rows.grams import SMALL, batched_grams, flat_blocks
from gradcomp.recorder.rows.pool import BlockPool
from gradcomp.recorder.rows.registry import RowsModule, lookup
from gradcomp.recorder.rows.spec import even_rows
from gradcomp.recorder.shared import Layout

__all__ = ["RowsHooks"]


class RowsHooks:
    """Hooks on the shared modules, and the per-task Gram entries of one backward."""

    def __init__(self, model: nn.Module, modules: Sequence[str]) -> None:
        self._modules = {n: model.get_submodule(n) for n in modules}
        self._entries: dict[str, RowsModule] = {}
        for n, m in self._modules.items():
            entry = lookup(m)
            if entry is None:
                raise ValueError(f"rows: no registered rows module type for {n!r} ({type(m)})")
            self._entries[n] = entry
        self._handles: list[Any] = []
        self._patched: list[tuple[nn.Module, Any]] = []
        self._calls: dict[str, int] = {}
        self._sizes: dict[str, set[int]] = {}
        self._step: Step | None = None
        self._pool = BlockPool()
        self._target_cache: dict[str, dict[str, tuple[int, int]]] = {}
        self._target_layout: Layout | None = None
        self.armed = False  # capture activations in forward (the next step is scheduled)
        self.only: set[str] | None = None  # modules that own shared parameters, once known
        self.batch_size = 0  # leading size of the first captured input
        self.keep = False  # also keep the captured outputs (to verify rows=, first step only)
        self.outputs: dict[str, list[Tensor]] = {}

    def install(self) -> None:
        """Install each module's fused instance ``forward`` where allowed, else a forward hook;
        :meth:`remove` undoes both."""
        for name, module in self._modules.items():
            entry = self._entries[name]
            if entry.fusable(module):
                fwd = functools.partial(self._fused, name, module, entry)
                module.__dict__["forward"] = fwd  # shadows the class forward; remove() deletes it
                self._patched.append((module, fwd))
            else:
                hook = functools.partial(self._forward, name)
                self._handles.append(module.register_forward_hook(hook))
        weakref.finalize(self, _remove_all, list(self._handles), list(self._patched))

    def remove(self) -> None:
        """Remove every hook and instance ``forward`` this object installed."""
        _remove_all(self._handles, self._patched)
        self._handles.clear()
        self._patched.clear()
        self._calls.clear()
        self._sizes.clear()
        self.outputs.clear()
        self._pool.clear()

    def _live(self, name: str) -> bool:
        return self.armed and torch.is_grad_enabled() and (self.only is None or name in self.only)

    def _count(self, name: str, module: nn.Module, x: Tensor) -> None:
        self._calls[name] = self._calls.get(name, 0) + 1
        self._sizes.setdefault(name, set()).add(self._entries[name].batch_size(module, x))

    def _fused(self, name: str, module: nn.Module, entry: RowsModule, *args: Any, **kw: Any) -> Any:
        cls_forward = type(module).forward
        if len(args) != 1 or kw or not isinstance(args[0], Tensor) or not self._live(name):
            return cls_forward(module, *args, **kw)
        x = args[0]
        assert entry.fused is not None
        out = entry.fused(self, name, module, x)
        if out is None:  # not this call (e.g. under autocast): the class forward and the hook
            out = cls_forward(module, x)
            self._forward(name, module, (x,), out)
            return out
        self._count(name, module, x)
        if self.keep:
            self.outputs.setdefault(name, []).append(out)
        return out

    def _forward(self, name: str, module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        if not (self._live(name) and isinstance(out, Tensor)):
            return
        if not out.requires_grad or not args or not isinstance(args[0], Tensor):
            return
        self._count(name, module, args[0])
        if self.keep:
            self.outputs.setdefault(name, []).append(out)
        out.register_hook(functools.partial(self._on_grad, name, module, args[0].detach()))

    def captured(self) -> set[str]:
        """Shared modules whose forward ran while armed with inputs of the batch's leading size.

        The batch size is the most common leading size of the captured inputs. A module that saw
        another leading size (e.g. position embeddings of shape ``[1, seq]`` broadcast over the
        batch) cannot be split by rows: its parameters take the fallback path.
        """
        names = {n for n, c in self._calls.items() if c and (self.only is None or n in self.only)}
        sizes = [s for n in names for s in self._sizes.get(n, set())]
        if not sizes:
            return set()
        self.batch_size = max(set(sizes), key=sizes.count)
        return {n for n in names if self._sizes.get(n) == {self.batch_size}}

    def run(
        self,
        total: Tensor,
        rows: Sequence[slice | Tensor],
        weights: Sequence[float],
        layout: Layout,
        units: bool,
        covered: set[str],
        train: bool = True,
    ) -> dict[int, tuple[Tensor, Tensor | None]]:
        """``total.backward()`` while the hooks of the ``covered`` modules reduce per-task blocks
        to Grams (``train=False``: ``torch.autograd.grad`` to the shared parameters instead, so
        no ``.grad`` changes and the graph is kept).

        Returns:
            For each shared parameter index the hooks covered, ``(gram [T, T], unit | None)``.
        """
        scale = [1.0 / w for w in weights]
        self._step = Step(
            list(rows), scale, layout, units, dict(self._calls), covered, even_rows(rows)
        )
        if any(w != 1.0 for w in weights):
            sc = torch.tensor(scale, dtype=torch.float64)
            self._step.outer = sc[:, None] * sc[None, :]
        try:
            if train:
                total.backward()
            else:
                want = [p for p in layout.params if p.requires_grad]
                torch.autograd.grad(total, want, retain_graph=True, allow_unused=True)
            for name in list(self._step.blocks):
                self._finish(name, self._step.blocks.pop(name))
            self._flush()
            return self._step.done
        finally:
            self._step = None
            self._calls.clear()
            self._sizes.clear()
            self.outputs.clear()

    def split(self, name: str, module: nn.Module, g: Tensor) -> Split | None:
        """The tasks' rows (on ``g``'s device) for one call of module ``name`` in this step's
        backward, blocks accumulated in ``acc_dtype(g.dtype)``; ``None`` when the module is not
        split this step. Modules with the same wanted parameters share one :class:`Split` per
        step, device and dtype (this runs once per module call inside the backward)."""
        st = self._step
        if st is None or name not in st.covered:
            return None
        want = wanted(module, self._entries[name].params(module), st)
        key = (want, g.dtype, g.device)
        sp = st.splits.get(key)
        if sp is None:
            rows = st.on.get(g.device)
            if rows is None:
                rows = [r.to(g.device) if isinstance(r, Tensor) else r for r in st.rows]
                st.on[g.device] = rows
            sp = Split(rows, st.even, acc_dtype(g.dtype), want, st.covers, self._pool)
            st.splits[key] = sp
        return sp

    def _on_grad(self, name: str, module: nn.Module, x: Tensor, g: Tensor) -> None:
        sp = self.split(name, module, g)
        if sp is None:
            return
        self.add(name, self._entries[name].blocks(module, x, g, sp) if sp.want else {})

    def add(self, name: str, new: dict[str, Any]) -> None:
        """Record one call's per-task blocks of module ``name`` (summed over its calls)."""
        st = self._step
        assert st is not None
        if st.calls.get(name, 0) <= 1 and name not in st.blocks:  # its only call: no sum
            self._finish(name, new)
            return
        have = st.blocks.setdefault(name, {})
        for k, v in new.items():
            have[k] = v if k not in have else have[k] + v
        st.arrived[name] = st.arrived.get(name, 0) + 1
        if st.arrived[name] >= st.calls.get(name, 0):
            self._finish(name, st.blocks.pop(name))

    def _targets(self, name: str) -> dict[str, tuple[int, int]]:
        """Parameter name within module ``name`` -> (index in the layout, units or 0)."""
        st = self._step
        assert st is not None
        out = self._target_cache.get(name)
        if out is None or self._target_layout is not st.layout:
            if self._target_layout is not st.layout:
                self._target_cache.clear()
                self._target_layout = st.layout
            prefix = f"{name}." if name else ""
            out = {}
            for k, full in enumerate(st.layout.names):
                if full.startswith(prefix):
                    out[full[len(prefix) :]] = (k, st.layout.units[k])
            self._target_cache[name] = out
        return out

    def _finish(self, name: str, blocks: dict[str, Any]) -> None:
        """Gram entries of module ``name``'s parameters from its blocks; small blocks wait for
        :meth:`_flush` (one batched product per size for the whole step)."""
        st = self._step
        assert st is not None
        finish = self._entries[name].finish
        targets = self._targets(name)
        for local, value in blocks.items():
            target = targets.get(local)
            if target is None:
                continue
            i, n_units = target
            if not st.units:
                n_units = 0
            stack = finish(value) if finish is not None else value
            flat = flat_blocks(stack)
            if not n_units and flat.numel() <= SMALL:
                st.later.append((i, flat))
                continue
            unit = unit_gram(stack.reshape(stack.shape[0], n_units, -1)) if n_units else None
            self._store(i, block_gram(flat), unit)
            self._pool.give(stack)  # the blocks are done with (if the pool lent them)

    def _flush(self) -> None:
        st = self._step
        assert st is not None
        grams = batched_grams([flat for _, flat in st.later])
        for (i, _), g in zip(st.later, grams, strict=True):
            self._store(i, g, None)
        st.later.clear()

    def _store(self, i: int, gram: Tensor, unit: Tensor | None) -> None:
        st = self._step
        assert st is not None
        if st.outer is not None:  # blocks of Σ_t w_t L_t: gram[t, s] / (w_t w_s)
            outer = st.outer.to(gram.device, gram.dtype)
            gram = gram * outer
            unit = None if unit is None else unit * outer
        st.done[i] = (gram, unit)


def autocast_on(x: Tensor) -> bool:
    """Whether autocast is enabled for ``x``'s device type."""
    try:
        return bool(torch.is_autocast_enabled(x.device.type))
    except TypeError:  # torch < 2.4: no device argument
        return bool(torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled())


def _remove_all(handles: list[Any], patched: list[tuple[nn.Module, Any]]) -> None:
    for h in handles:
        h.remove()
    for m, fwd in patched:
        if m.__dict__.get("forward") is fwd:  # not if someone wrapped it since
            del m.__dict__["forward"]
