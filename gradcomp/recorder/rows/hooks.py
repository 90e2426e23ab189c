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
from gradcomp.recorder.rows.native import Holders
from gradcomp.recorder.rows.native import ops as native_ops
from gradcomp.recorder.rows.pool import MIN_BYTES, BlockPool
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
        # the C++ path (:mod:`.native`): (T, rows per task, batch size) of the last recorded step
        # when its rows were even; this step's holders per module and their shared state
        self._plan: tuple[int, int, int] | None = None
        self._native: dict[str, Holders] = {}
        self._native_plan: tuple[int, int, int] | None = None
        self._state: Tensor | None = None
        self._ops: Any = None
        self._bank: Tensor | None = None
        self._n_native = 0  # modules that took the C++ path in the last step
        self._holders: dict[str, Holders] = {}  # per module, reused step to step
        self._param_cache: dict[str, tuple[tuple[str, ...], tuple[Tensor, ...]]] = {}
        self._scratch: dict[tuple[int, torch.dtype], Tensor] = {}
        self._empty = torch.empty(0)  # (a Linear's scratch when the call allocates: never resized)

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
        self._native.clear()
        self._state = self._plan = self._native_plan = self._bank = self._ops = None
        self._holders.clear()
        self._param_cache.clear()
        self._scratch.clear()

    def _live(self, name: str) -> bool:
        return self.armed and torch.is_grad_enabled() and (self.only is None or name in self.only)

    def _count(self, name: str, module: nn.Module, x: Tensor) -> None:
        self._calls[name] = self._calls.get(name, 0) + 1
        self._sizes.setdefault(name, set()).add(self._entries[name].batch_size(module, x))

    def native(self, name: str, module: nn.Module, x: Tensor) -> Holders | None:
        """The holders of a C++ call of module ``name`` in this forward (:mod:`.native`), or
        ``None``: the module's Python function runs instead (first step, another batch size,
        dtype or device, autocast, a frozen or unshared parameter, no compiled module)."""
        plan = self._plan
        if plan is None or self.keep or x.ndim < 2 or x.shape[0] != plan[2]:
            return None
        held = self._native.get(name)
        if held is None:
            held = self._hold(name, module, x, plan)
            if held is None:
                return None
            self._native[name] = held
        held.calls += 1
        return held

    def _hold(
        self, name: str, module: nn.Module, x: Tensor, plan: tuple[int, int, int]
    ) -> Holders | None:
        dtype = x.dtype
        if (dtype is not torch.float32 and dtype is not torch.float64) or autocast_on(x):
            return None
        params = self._native_params(name, module)
        if params is None:
            return None
        where = x.get_device()  # (-1: the CPU; cheaper than comparing torch.device objects)
        for p in params:
            if not p.requires_grad or p.dtype is not dtype or p.get_device() != where:
                return None
        t = plan[0]
        if self._state is None:  # the step's first C++ call
            ops = native_ops()
            if ops is None:
                return None
            self._ops = ops
            self._state = torch.tensor([t, plan[1], 0], dtype=torch.int64)
            self._native_plan = plan
            self._bank = x.new_zeros((max(self._n_native, 1), 2, t, t))
        bank, row = self._bank, len(self._native)
        fits = bank is not None and row < bank.shape[0]
        if fits and bank.dtype is dtype and bank.get_device() == where:  # type: ignore[union-attr]
            slots = bank[row]  # type: ignore[index]  # one zeroed tensor per step for all modules
        else:
            slots, row = x.new_zeros((2, t, t)), -1
        held = self._holders.get(name)
        if held is None or held.acc_w.dtype is not dtype or held.acc_w.get_device() != where:
            empty = x.new_empty(0), x.new_empty(0)
            held = self._holders[name] = Holders(self._ops, slots, *empty, self._state)
        held.ops, held.slots, held.state = self._ops, slots, self._state
        held.calls, held.row = 0, row
        if held.buf_for != (t, x.dtype):
            held.buf, held.buf_for = self._scratch_for(module, x, t), (t, x.dtype)
        return held

    def _native_params(self, name: str, module: nn.Module) -> tuple[Tensor, ...] | None:
        """The parameters a C++ call of module ``name`` splits (cached per module while they are
        the same objects), or ``None`` when one is not shared or is parametrized."""
        own = module._parameters  # (a parametrized weight is not there: the Python path)
        cached = self._param_cache.get(name)
        if cached is not None:
            names, params = cached
            same = own.get(names[0]) is params[0] if names else True
            for k in range(1, len(names)):
                same = same and own.get(names[k]) is params[k]
            if same:
                return params
        targets = self._target_cache.get(name)  # known once a step went the Python way
        if targets is None:
            return None
        found: list[str] = []
        kept: list[Tensor] = []
        for local in self._entries[name].params(module):
            p = own.get(local)
            if p is None:
                if local in own or getattr(module, local, None) is None:
                    continue  # no such parameter (a Linear without bias)
                return None
            if local not in targets:
                return None
            found.append(local)
            kept.append(p)
        self._param_cache[name] = (tuple(found), tuple(kept))
        return tuple(kept)

    def _scratch_for(self, module: nn.Module, x: Tensor, n_tasks: int) -> Tensor:
        """A CPU buffer for a C++ Linear call's ``[T, out, in]`` blocks, shared by the modules
        of one size and reused step to step (the blocks live only inside one backward call; see
        :mod:`.pool`), or an empty tensor (not a Linear, another device, or small: the call
        allocates)."""
        weight = module._parameters.get("weight") if isinstance(module, nn.Linear) else None
        numel = n_tasks * weight.numel() if weight is not None else 0
        if not numel or x.device.type != "cpu" or numel * x.element_size() < MIN_BYTES:
            return self._empty
        key = (numel, x.dtype)
        buf = self._scratch.get(key)
        if buf is None:
            buf = self._scratch[key] = torch.empty(numel, dtype=x.dtype)
        return buf

    def unsplit(self, rows: Sequence[slice | Tensor]) -> set[str]:
        """Modules whose C++ calls in this forward cannot be split by ``rows`` (other tasks or
        rows per task than the step before): their parameters take the fallback."""
        if not self._native:
            return set()
        if self._native_plan is not None and self._native_plan[:2] == (len(rows), even_rows(rows)):
            return set()
        return set(self._native)

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
    ) -> tuple[dict[int, tuple[Tensor, Tensor | None]], tuple[list[int], Tensor] | None]:
        """``total.backward()`` while the hooks of the ``covered`` modules reduce per-task blocks
        to Grams (``train=False``: ``torch.autograd.grad`` to the shared parameters instead, so
        no ``.grad`` changes and the graph is kept).

        Returns:
            For each shared parameter index the hooks covered, ``(gram [T, T], unit | None)``;
            and the Grams the C++ functions wrote, ``(indices, grams [k, T, T])`` (or ``None``),
            for the parameters not in the first.
        """
        scale = [1.0 / w for w in weights]
        self._step = Step(
            list(rows), scale, layout, units, dict(self._calls), covered, even_rows(rows)
        )
        if any(w != 1.0 for w in weights):
            sc = torch.tensor(scale, dtype=torch.float64)
            self._step.outer = sc[:, None] * sc[None, :]
        try:
            self._settle(covered, units)
            if train:
                total.backward()
            else:
                want = [p for p in layout.params if p.requires_grad]
                torch.autograd.grad(total, want, retain_graph=True, allow_unused=True)
            self._collect()
            for name in list(self._step.blocks):
                self._finish(name, self._step.blocks.pop(name))
            self._flush()
            return self._step.done, self._step.bulk
        finally:
            if self._state is not None:
                self._state[2] = 0  # a retained graph's nodes give plain gradients from now on
            self._plan = (len(rows), self._step.even, self.batch_size) if self._step.even else None
            self._step = None
            for held in self._native.values():  # the holders serve the module's next step
                if held.acc_w.numel() or held.acc_b.numel():
                    held.acc_w.resize_(0)
                    held.acc_b.resize_(0)
            self._n_native = len(self._native)
            self._native = {}
            self._state = self._native_plan = self._bank = None
            self._calls.clear()
            self._sizes.clear()
            self.outputs.clear()

    def _settle(self, covered: set[str], units: bool) -> None:
        """Before the backward: tell each module's C++ calls what to do with their blocks, and
        note where in the bank of slots each parameter's Gram will be."""
        st = self._step
        assert st is not None
        src, dst = st.bulk_src, st.bulk_dst
        for name, held in self._native.items():
            if name not in covered:
                held.slots.resize_(0)  # plain gradients only
                continue
            targets = self._targets(name)
            if held.calls > 1 or (units and any(n for _, n in targets.values())):
                module = self._modules[name]  # the Python side takes the summed blocks
                for local, acc in (("weight", held.acc_w), ("bias", held.acc_b)):
                    p = getattr(module, local, None)
                    if p is not None:
                        acc.resize_((len(st.rows), *p.shape)).zero_()
                st.native_later.append((name, held))
            elif held.row < 0:  # slots of its own
                st.native_later.append((name, held))
            else:
                for j, local in enumerate(("weight", "bias")):
                    target = targets.get(local)
                    if target is not None:
                        src.append(2 * held.row + j)
                        dst.append(target[0])
        if self._state is not None:
            self._state[2] = 1

    def _collect(self) -> None:
        """After the backward: the Gram entries the C++ calls wrote (the bank's, all at once),
        or their summed blocks."""
        st = self._step
        assert st is not None
        for name, held in st.native_later:
            if held.acc_w.numel() or held.acc_b.numel():
                blocks = {"weight": held.acc_w, "bias": held.acc_b}
                self._finish(name, {k: v for k, v in blocks.items() if v.numel()})
                continue
            targets = self._targets(name)
            for j, local in enumerate(("weight", "bias")):
                target = targets.get(local)
                if target is not None:
                    self._store(target[0], held.slots[j], None)
        if st.bulk_src and self._bank is not None:
            t = self._bank.shape[-1]
            flat = self._bank.view(-1, t, t)
            n = len(st.bulk_src)
            grams = flat[:n] if st.bulk_src == list(range(n)) else flat[st.bulk_src]
            if st.outer is not None:  # blocks of Σ_t w_t L_t: gram[t, s] / (w_t w_s)
                grams = grams * st.outer.to(grams.device, grams.dtype)
            st.bulk = (st.bulk_dst, grams)

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
                self._param_cache.clear()
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
