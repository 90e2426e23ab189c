"""The ``"rows"`` strategy: tasks that own disjoint rows of the batch, one ordinary backward.

The user says which batch rows (leading dimension) belong to which task:
``Recorder.backward(losses, rows={"alice": slice(0, 16), "bob": slice(16, 32)})`` (slices, index
tensors, lists of ints or boolean masks). When every loss ``L_t`` depends only on its own rows and
the model never mixes rows (no batch norm), the output gradient ``G`` of a shared module in the one
backward of ``Σ_t w_t L_t`` restricted to task t's rows is ``w_t ∂L_t/∂out``. So, from activations
``X`` kept by a forward hook, without any extra reverse pass:

- ``nn.Linear``: ``∂L_t/∂W = G_tᵀ X_t / w_t``, ``∂L_t/∂b = Σ_rows G_t / w_t``;
- ``nn.LayerNorm``: ``∂L_t/∂γ = Σ_rows G_t ⊙ X̂_t / w_t``, ``∂L_t/∂β = Σ_rows G_t / w_t``;
- ``nn.Embedding``: ``∂L_t/∂E`` = rows of ``G_t / w_t`` added at the token ids (only touched rows).

Each module's per-task blocks are reduced to Gram entries as soon as its gradient arrives and then
dropped. Plain ``nn.Linear``s form their weight gradient as the sum of those blocks
(:mod:`gradcomp.recorder.rows_linear`: no extra product); the others keep the ordinary backward.
Shared parameters of other modules (and modules called outside their ``forward``, or whose input
is not batch-sized) fall back to one vmapped VJP. The training gradient is that of the one
backward (up to summation order for the Linears). Assumptions (the user's promise when passing
``rows=``): row independence, rows along dimension 0 of every hooked input (batch first),
non-zero loss weights, and shared parameters used only inside their module's forward (no tied
weights used elsewhere).
"""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradcomp.recorder.rows_blocks import Step, blocks, compact, embedding_rows, supported, wanted
from gradcomp.recorder.rows_layernorm import FusedLayerNorm, patchable_layernorm
from gradcomp.recorder.rows_linear import FusedLinear, patchable
from gradcomp.recorder.shared import Layout
from gradcomp.recorder.stats import acc_dtype, param_stats

__all__ = ["RowsHooks", "as_row_index", "check_disjoint", "check_rows", "even_rows", "supported"]

RowSpec = slice | Sequence[int] | Tensor


def as_row_index(spec: RowSpec, n_rows: int) -> slice | Tensor:
    """Batch rows of one task: a slice stays a slice (views, no copies); anything else becomes a
    1-D ``long`` index (from a list of ints, an index tensor or a boolean mask)."""
    if isinstance(spec, slice):
        return spec
    if isinstance(spec, Tensor):
        idx = spec.nonzero().flatten() if spec.dtype == torch.bool else spec.flatten().long()
    elif isinstance(spec, Sequence) and all(isinstance(i, int) for i in spec):
        idx = torch.as_tensor(list(spec), dtype=torch.long)
    else:
        raise ValueError(
            f"rows= entries must be slices, int lists, index or bool tensors, got {spec!r}"
        )
    if n_rows and idx.numel() and (int(idx.min()) < -n_rows or int(idx.max()) >= n_rows):
        raise ValueError(f"rows= index out of range for a batch of {n_rows} rows")
    return idx


def check_disjoint(rows: Sequence[slice | Tensor], n_rows: int) -> None:
    """Raise a ``ValueError`` if two tasks share a batch row."""
    if not n_rows:  # no module could be split by rows: everything takes the fallback
        return
    owner = torch.zeros(n_rows, dtype=torch.long)
    for r in rows:
        owner[r.cpu() if isinstance(r, Tensor) else r] += 1
    if int(owner.max()) > 1:
        raise ValueError("rows= must give each task disjoint batch rows; some rows repeat")


class RowsHooks:
    """Forward hooks on the shared modules, and the per-task Gram entries of one backward."""

    def __init__(self, model: nn.Module, modules: Sequence[str]) -> None:
        self._modules = {n: model.get_submodule(n) for n in modules}
        self._handles: list[Any] = []
        self._patched: list[nn.Module] = []
        self._calls: dict[str, int] = {}
        self._sizes: dict[str, set[int]] = {}
        self._step: Step | None = None
        self.armed = False  # capture activations in forward (the next step is scheduled)
        self.only: set[str] | None = None  # modules that own shared parameters, once known
        self.batch_size = 0  # leading size of the first captured input
        self.keep = False  # also keep the captured outputs (to verify rows=, first step only)
        self.outputs: dict[str, list[Tensor]] = {}

    def install(self) -> None:
        """Route plain ``nn.Linear`` and ``nn.LayerNorm`` modules through :class:`FusedLinear`
        and :class:`FusedLayerNorm` (an instance ``forward``) and register a forward hook on the
        others; :meth:`remove` undoes both."""
        for name, module in self._modules.items():
            if isinstance(module, nn.Linear) and patchable(module):
                # an instance attribute shadows nn.Linear.forward; remove() deletes it
                module.__dict__["forward"] = functools.partial(self._linear, name, module)
                self._patched.append(module)
            elif isinstance(module, nn.LayerNorm) and patchable_layernorm(module):
                module.__dict__["forward"] = functools.partial(self._layernorm, name, module)
                self._patched.append(module)
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

    def _linear(self, name: str, module: nn.Linear, x: Tensor) -> Tensor:
        if not (self.armed and torch.is_grad_enabled()) or (
            self.only is not None and name not in self.only
        ):
            return F.linear(x, module.weight, module.bias)
        self._calls[name] = self._calls.get(name, 0) + 1
        self._sizes.setdefault(name, set()).add(int(x.shape[0]) if x.ndim else 0)
        out: Tensor = FusedLinear.apply(x, module.weight, module.bias, self, name, module)
        if self.keep:
            self.outputs.setdefault(name, []).append(out)
        return out

    def _layernorm(self, name: str, module: nn.LayerNorm, x: Tensor) -> Tensor:
        if (
            not (self.armed and torch.is_grad_enabled())
            or (self.only is not None and name not in self.only)
            or _autocast(x)
        ):
            plain = F.layer_norm(x, module.normalized_shape, module.weight, module.bias, module.eps)
            self._forward(name, module, (x,), plain)  # under autocast: the output-gradient hook
            return plain
        self._calls[name] = self._calls.get(name, 0) + 1
        self._sizes.setdefault(name, set()).add(int(x.shape[0]) if x.ndim else 0)
        out: Tensor = FusedLayerNorm.apply(x, module.weight, module.bias, self, name, module)
        if self.keep:
            self.outputs.setdefault(name, []).append(out)
        return out

    def layernorm_blocks(
        self, name: str, module: nn.LayerNorm, g: Tensor, gxhat: Tensor
    ) -> tuple[Tensor, Tensor] | None:
        """Inside :class:`FusedLayerNorm`'s backward: record the per-task blocks of ``γ``
        (row sums of ``G ⊙ X̂``) and ``β`` (row sums of ``G``); return their sums over tasks when
        the tasks' rows cover the batch, else ``None``."""
        st = self._step
        if st is None or name not in st.covered:
            return None
        dt = acc_dtype(g.dtype)
        shape = tuple(module.normalized_shape)
        d = math.prod(shape)
        n_tasks = len(st.rows)
        if st.even:
            cut = n_tasks * st.even
            gw = gxhat[:cut].reshape(n_tasks, -1, d).sum(1, dtype=dt)
            gb = g[:cut].reshape(n_tasks, -1, d).sum(1, dtype=dt)
            full = cut == g.shape[0]
        else:
            rows = [r.to(g.device) if isinstance(r, Tensor) else r for r in st.rows]
            gw = torch.stack([gxhat[r].reshape(-1, d).sum(0, dtype=dt) for r in rows])
            gb = torch.stack([g[r].reshape(-1, d).sum(0, dtype=dt) for r in rows])
            full = sum(g[r].reshape(-1, d).shape[0] for r in rows) == g.reshape(-1, d).shape[0]
        want = wanted(module, st)
        new = {}
        if "weight" in want:
            new["weight"] = gw.reshape(n_tasks, *shape)
        if "bias" in want:
            new["bias"] = gb.reshape(n_tasks, *shape)
        self._add(name, new)
        if not full:
            return None
        return gw.sum(0).reshape(shape), gb.sum(0).reshape(shape)

    def linear_blocks(
        self, name: str, module: nn.Linear, x: Tensor, g: Tensor
    ) -> tuple[Tensor, Tensor | None] | None:
        """Inside :class:`FusedLinear`'s backward: record the per-task blocks of the weight (and
        bias) gradient; return their sums over tasks (weight, bias or ``None``) when the tasks'
        rows cover the batch, else ``None``."""
        st = self._step
        if st is None or name not in st.covered:
            return None
        cd = g.dtype
        dt = acc_dtype(cd)
        n_tasks = len(st.rows)
        if st.even:
            cut = n_tasks * st.even
            g3 = g[:cut].reshape(n_tasks, -1, g.shape[-1])
            x3 = x[:cut].to(cd).reshape(n_tasks, -1, x.shape[-1])
            raw = torch.bmm(g3.transpose(1, 2), x3)  # [T, out, in]: G_tᵀ X_t
            bias = g3.sum(1) if module.bias is not None else None
            full = cut == g.shape[0]
        else:
            rows = [r.to(g.device) if isinstance(r, Tensor) else r for r in st.rows]
            gs = [g[r].reshape(-1, g.shape[-1]) for r in rows]
            xs = [x[r].to(cd).reshape(-1, x.shape[-1]) for r in rows]
            raw = torch.stack([gt.T @ xt for gt, xt in zip(gs, xs, strict=True)])
            bias = torch.stack([gt.sum(0) for gt in gs]) if module.bias is not None else None
            full = sum(gt.shape[0] for gt in gs) == g.reshape(-1, g.shape[-1]).shape[0]
        new = {"weight": raw.to(dt)}  # unscaled: 1 / w_t is applied to the Gram (_finish)
        if bias is not None and module.bias.requires_grad:
            new["bias"] = bias.to(dt)
        if not module.weight.requires_grad:
            del new["weight"]
        self._add(name, new)
        if not full:
            return None
        return raw.sum(0, dtype=dt), None if bias is None else bias.sum(0, dtype=dt)

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

    def _forward(self, name: str, module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        if not (self.armed and torch.is_grad_enabled() and isinstance(out, Tensor)):
            return
        if not out.requires_grad or not args or not isinstance(args[0], Tensor):
            return
        if self.only is not None and name not in self.only:
            return
        self._calls[name] = self._calls.get(name, 0) + 1
        self._sizes.setdefault(name, set()).add(int(args[0].shape[0]) if args[0].ndim else 0)
        if self.keep:
            self.outputs.setdefault(name, []).append(out)
        out.register_hook(functools.partial(self._on_grad, name, module, args[0].detach()))

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
            list(rows), scale, layout, units, dict(self._calls), covered, even_rows(rows),
            {n: i for i, n in enumerate(layout.names)},
        )  # fmt: skip
        if any(w != 1.0 for w in weights):
            sc = torch.tensor(scale, dtype=torch.float64)
            self._step.outer = sc[:, None] * sc[None, :]
        try:
            if train:
                total.backward()
            else:
                wanted = [p for p in layout.params if p.requires_grad]
                torch.autograd.grad(total, wanted, retain_graph=True, allow_unused=True)
            for name in {*self._step.blocks, *self._step.sparse}:
                self._finish(name)
            return self._step.done
        finally:
            self._step = None
            self._calls.clear()
            self._sizes.clear()
            self.outputs.clear()

    def _on_grad(self, name: str, module: nn.Module, x: Tensor, g: Tensor) -> None:
        st = self._step
        if st is None or name not in st.covered:
            return
        dt = acc_dtype(g.dtype if g.dtype == torch.float64 else torch.float32)
        if isinstance(module, nn.Embedding):
            if module.weight.requires_grad and "weight" in supported(module):
                st.sparse.setdefault(name, []).append(embedding_rows(module, x, g, st, dt))
            self._arrived(name)
        else:
            self._add(name, blocks(module, x, g, st, dt))

    def _add(self, name: str, new: dict[str, Tensor]) -> None:
        st = self._step
        assert st is not None
        have = st.blocks.setdefault(name, {})
        for k, v in new.items():
            have[k] = v if k not in have else have[k] + v
        self._arrived(name)

    def _arrived(self, name: str) -> None:
        st = self._step
        assert st is not None
        st.arrived[name] = st.arrived.get(name, 0) + 1
        if st.arrived[name] >= st.calls.get(name, 0):
            self._finish(name)

    def _finish(self, name: str) -> None:
        st = self._step
        assert st is not None
        blocks = st.blocks.pop(name, {})
        if name in st.sparse:
            blocks["weight"] = compact(st.sparse.pop(name))
        prefix = f"{name}." if name else ""
        for local, stack in blocks.items():
            i = st.index.get(prefix + local)
            if i is not None:
                gram, unit = param_stats(stack, st.layout.units[i] if st.units else 0)
                if st.outer is not None:  # blocks of Σ_t w_t L_t: gram[t, s] / (w_t w_s)
                    outer = st.outer.to(gram.device, gram.dtype)
                    gram = gram * outer
                    unit = None if unit is None else unit * outer
                st.done[i] = (gram, unit)


def even_rows(rows: Sequence[slice | Tensor]) -> int:
    """n when ``rows[t] == slice(t * n, (t + 1) * n)`` for every task t, else 0."""
    first = rows[0]
    if not isinstance(first, slice) or first.start not in (0, None) or first.stop is None:
        return 0
    n = first.stop
    for t, r in enumerate(rows):
        if not isinstance(r, slice) or r.step not in (None, 1):
            return 0
        if (r.start or 0) != t * n or r.stop != (t + 1) * n:
            return 0
    return int(n) if n > 0 else 0


def _autocast(x: Tensor) -> bool:
    try:
        return bool(torch.is_autocast_enabled(x.device.type))
    except TypeError:  # torch < 2.4: no device argument
        return bool(torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled())


def _remove_all(handles: list[Any], patched: list[nn.Module]) -> None:
    for h in handles:
        h.remove()
    for m in patched:
        m.__dict__.pop("forward", None)


def check_rows(rows: Mapping[str, RowSpec], tasks: Sequence[str]) -> None:
    """Validate ``rows=``: exactly the recorded tasks."""
    missing = [t for t in tasks if t not in rows]
    extra = [t for t in rows if t not in tasks]
    if missing or extra:
        raise ValueError(f"rows= must name every task once: missing {missing}, unknown {extra}")
