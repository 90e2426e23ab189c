"""``gradcomp.record``: the per-task gradient recorder (a context manager around training steps).

Paper: the NCnet mechanism (Zhao, Wu, Hou 2026, arXiv 2603.04451) is *gradient competition* for
shared weights; what this records is the Gram matrix ``gram[t, s] = ⟨∂L_t/∂θ, ∂L_s/∂θ⟩`` of the
per-task gradients of the unweighted task losses on each group θ of shared parameters, with
``grad_norm`` and ``cosine`` derived from it, while the training gradient left in ``.grad`` is
that of ``Σ_t w_t L_t``.
"""

from __future__ import annotations

import operator
import os
import warnings
from collections.abc import Mapping, Sequence
from os import PathLike
from types import TracebackType
from typing import Any, Generic, TypeVar, overload

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from gradcomp.dims import STEP
from gradcomp.recorder import rows as rows_mod
from gradcomp.recorder._graph import reachable_leaves
from gradcomp.recorder._inputs import check_losses, weighted_total
from gradcomp.recorder.choice import StrategyChoice
from gradcomp.recorder.compiled import (
    check_reached,
    discover_shared_by_grad,
    has_compiled_node,
    is_compiled,
    rows_error,
)
from gradcomp.recorder.config import DEFAULT_FLUSH_EVERY, RecordConfig, Reduce
from gradcomp.recorder.dataset import Steps, records_rep_gram
from gradcomp.recorder.io import (
    append_netcdf,
    append_zarr,
    is_zarr,
    keep_steps,
    read_steps,
    write_netcdf,
    zarr_steps,
)
from gradcomp.recorder.shared import (
    Layout,
    SharedSpec,
    discover_shared,
    make_layout,
    named_parameters,
    resolve_shared,
)
from gradcomp.recorder.stats import layer_stats, to_layers
from gradcomp.schedule import Every, Schedule

__all__ = [
    "DEFAULT_FLUSH_EVERY",
    "NonfiniteGradientWarning",
    "NonfiniteLossWarning",
    "RecordConfig",
    "Recorder",
    "record",
]

_T = TypeVar("_T")


class NonfiniteLossWarning(RuntimeWarning):
    """A task loss was NaN or infinite; its statistics at that step are NaN."""


class NonfiniteGradientWarning(RuntimeWarning):
    """A task's loss was finite but its gradient on a shared layer was not (NaN or infinite, or
    its squared norm overflowed); its statistics on that layer at that step are NaN."""


def record(
    model: nn.Module,
    tasks: Sequence[str] | Mapping[str, float],
    *,
    shared: SharedSpec = None,
    layers: str | Mapping[str, Sequence[str]] = "module",
    every: Every = 1,
    strategy: str = "auto",
    units: bool = False,
    store: str = "stats",
    path: str | PathLike[str] | None = None,
    flush_every: int | None = None,
    on_nonfinite: str = "warn",
    reduce: Reduce | None = None,
) -> Recorder:
    """Record per-task gradient statistics of the shared parameters during training.

    Use as ``with gradcomp.record(model, ["a", "b"]) as rec: ... rec.backward({"a": la, "b": lb})``.

    Args:
        model: the model whose parameters are recorded.
        tasks: task names, or a mapping name -> loss weight w_t (training loss Σ_t w_t L_t;
            default weight 1).
        shared: ``None`` (parameters reached by two or more task losses, found on the first
            ``backward``; under ``torch.compile`` from non-zero per-task gradients), a module, a
            parameter name, or a sequence of them.
        layers: ``"module"`` (one layer per module owning shared parameters), ``"param"`` (one
            per tensor) or a mapping layer -> parameter names. ``"all"`` is always added.
        every: an int k (every k steps), a tuple of steps or a ``step -> bool`` schedule
            (:func:`gradcomp.linear`, :func:`gradcomp.logarithmic`;
            :func:`gradcomp.schedule.as_schedule`). Unscheduled steps are a plain backward of the
            weighted sum.
        strategy: ``"auto"``, ``"loop"``, ``"batched"``, ``"features"``, ``"rows"`` (see
            ``docs/record.md``) or a strategy added with
            :func:`gradcomp.recorder.strategy.register_strategy`. ``"auto"`` takes ``"rows"``
            when ``backward`` gets ``rows=`` and T >= 2 (from the step after the first such
            call, when its hooks are in place); on CUDA with T >= 4 ``"features"`` (if
            ``features=`` is given) or ``"batched"``; otherwise ``"loop"``. ``"rows"`` never
            materialises whole per-task gradients, so with ``reduce`` or ``store="full"`` it is
            replaced by ``"features"`` (when ``features=`` is given) or ``"batched"``. Under
            ``torch.compile`` ``"auto"`` is ``"loop"`` and ``"rows"`` is refused.
            ``"features"`` also records ``rep_gram(step, task, task_j)``, the Gram of the
            per-task gradients at ``features=`` (``docs/record.md``), unless ``reduce`` is given.
        units: also record ``unit_gram`` for shared ``nn.Linear`` layers (per output neuron).
        store: ``"stats"`` or ``"full"`` (also the per-task gradients, variable ``grad``).
        path: where the recording is flushed to (every ``flush_every`` recorded steps and on
            exit). Each flush appends the steps held in memory and drops them from memory, so
            memory holds at most ``flush_every`` steps. A ``.zarr`` path (recommended for long
            recordings) appends only the new steps, so the total flush cost grows linearly with
            the recording's length; an existing ``.zarr`` recording is resumed (its steps are
            kept, numbering continues after its last step, and its variables must match). Any
            other suffix writes netCDF, rewritten (copied and appended to) on every flush and
            replaced by a new recording.
        flush_every: flush to ``path`` after this many recorded steps (default
            :data:`DEFAULT_FLUSH_EVERY` when ``path`` is given).
        on_nonfinite: ``"warn"`` or ``"raise"``, for a NaN/infinite task loss (before anything is
            back-propagated) and for a finite loss whose gradient on a shared layer is not finite
            (after the backward: ``.grad`` then holds it). ``"warn"`` records the task's
            statistics as NaN (on the layers concerned) and warns (:class:`NonfiniteLossWarning`,
            :class:`NonfiniteGradientWarning`).
        reduce: applied to every stacked per-task gradient ``[T, *param.shape]`` before any
            reduction (e.g. an all-reduce across data-parallel ranks). It changes only the
            statistics, never ``.grad``.

    Returns:
        A :class:`Recorder` (a context manager).
    """
    return Recorder(
        model, tasks, shared=shared, layers=layers, every=every, strategy=strategy, units=units,
        store=store, path=path, flush_every=flush_every, on_nonfinite=on_nonfinite, reduce=reduce,
    )  # fmt: skip


class _Option(Generic[_T]):
    """A read-only attribute of :class:`Recorder` that is the option of the same name in its
    ``config``."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, rec: None, owner: type) -> _Option[_T]: ...
    @overload
    def __get__(self, rec: Recorder, owner: type) -> _T: ...
    def __get__(self, rec: Recorder | None, owner: type) -> _Option[_T] | _T:
        if rec is None:
            return self
        value: _T = getattr(rec.config, self.name)
        return value

    def __set__(self, rec: Recorder, value: object) -> None:
        raise AttributeError(f"{self.name} is read-only (an option of rec.config)")


class Recorder:
    """Context manager returned by :func:`record`; see there for the arguments.

    Its options are one validated, frozen :class:`~gradcomp.recorder.config.RecordConfig`
    (``rec.config``; :meth:`from_config` builds a recorder from one).
    """

    def __init__(  # the options of :func:`record`, see there
        self,
        model: nn.Module,
        tasks: Sequence[str] | Mapping[str, float],
        *,
        shared: SharedSpec = None,
        layers: str | Mapping[str, Sequence[str]] = "module",
        every: Every = 1,
        strategy: str = "auto",
        units: bool = False,
        store: str = "stats",
        path: str | PathLike[str] | None = None,
        flush_every: int | None = None,
        on_nonfinite: str = "warn",
        reduce: Reduce | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        config = RecordConfig(
            tasks, shared=shared, layers=layers, every=every, strategy=strategy, units=units,
            store=store, path=path, flush_every=flush_every, on_nonfinite=on_nonfinite,
            reduce=reduce,
        )  # fmt: skip
        self._setup(model, config)

    @classmethod
    def from_config(cls, model: nn.Module, config: RecordConfig) -> Recorder:
        """A recorder of ``model`` with the options ``config``."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(config, RecordConfig):
            raise TypeError(f"config must be a RecordConfig, got {type(config).__name__}")
        rec = cls.__new__(cls)
        rec._setup(model, config)
        return rec

    def _setup(self, model: nn.Module, config: RecordConfig) -> None:
        self.model = model
        self.config = config
        self.weights = config.weights
        self.tasks = config.task_names
        self.layout: Layout | None = None
        self._steps = Steps()  # recorded steps not yet flushed to ``path``
        self._flushed = 0  # steps appended to ``path`` (and dropped from memory)
        self._recorded = 0
        self._used: set[str] = set()
        self._counter = 0
        self._last_step: int | None = None
        self._appended = False  # this recorder appended to its Zarr store (so checked it)
        if config.path is not None and is_zarr(config.path):  # resume: append to those there
            self._flushed, self._last_step = zarr_steps(config.path)
            if self._last_step is not None:
                self._counter = self._last_step + 1
        self._reach_checked = False
        self._active = False
        self._compiled = is_compiled(model)  # also set by a compiled node in the first graph
        self._reached: dict[str, set[str]] | None = None
        self._latest: tuple[int, Tensor, Tensor] | None = None
        # DistributedDataParallel syncs gradients in hooks that only ``backward()`` fires
        self._ddp = any(isinstance(m, nn.parallel.DistributedDataParallel) for m in model.modules())
        self._choice = StrategyChoice(model, config, ddp=self._ddp)
        self._rep_gram = records_rep_gram(self._config())  # the Dataset gets ``rep_gram``
        if config.shared is not None:
            self.layout = make_layout(model, resolve_shared(model, config.shared), config.layers)

    # -- options (read-only: ``self.config``) ---------------------------------------------------
    strategy = _Option[str]()
    units = _Option[bool]()
    store = _Option[str]()
    path = _Option["str | PathLike[str] | None"]()
    flush_every = _Option["int | None"]()
    on_nonfinite = _Option[str]()
    reduce = _Option["Reduce | None"]()

    @property
    def _schedule(self) -> Schedule:
        return self.config.schedule

    # -- context ------------------------------------------------------------------------------
    def __enter__(self) -> Recorder:
        if self._active:
            raise RuntimeError("this Recorder is already active; use one `with` block at a time")
        if self.strategy == "rows" and self._compiled:
            raise rows_error()
        self._active = True
        self._choice.enter(self.layout, self._counter)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._active = False
        self._choice.remove_hooks()
        if self.path is not None and self.layout is not None:
            try:  # also after an exception in the body: keep what was recorded
                self.flush()
            except Exception:
                if exc_type is None:
                    raise

    # -- public -------------------------------------------------------------------------------
    def backward(
        self,
        losses: Mapping[str, Tensor],
        *,
        step: int | None = None,
        features: Tensor | Sequence[Tensor] | None = None,
        rows: Mapping[str, rows_mod.RowSpec] | None = None,
    ) -> None:
        """Back-propagate ``Σ_t w_t L_t`` into ``.grad`` and, at scheduled steps, record.

        Args:
            losses: one scalar loss per task (every task, no other).
            step: the step number; default: one more than the previous call (0 first). Must
                be larger than the previous call's step (repeated or decreasing steps are
                refused).
            features: the shared trunk's output tensor(s) for strategy ``"features"``.
            rows: task -> its batch rows (dimension 0) for strategy ``"rows"``.
        """
        self._step_call("backward", losses, step, features, rows)

    def observe(  # the arguments of :meth:`backward`
        self,
        losses: Mapping[str, Tensor],
        *,
        step: int | None = None,
        features: Tensor | Sequence[Tensor] | None = None,
        rows: Mapping[str, rows_mod.RowSpec] | None = None,
    ) -> None:
        """Record the statistics of ``losses`` without touching ``.grad``.

        For evaluation batches, or callbacks that must not replay a training step: the
        recorded ``loss``, ``gram`` (and ``unit_gram``) equal those :meth:`backward` would
        record for the same losses, while every ``.grad`` stays as it was (``None`` stays
        ``None``). The step is recorded whatever the schedule (``every=``). The autograd graph
        is kept, so the caller may still back-propagate the losses. Strategy ``"rows"`` uses the
        hooks' captures only when this step was scheduled (the forward hooks capture only
        before scheduled steps); otherwise its shared parameters take one vmapped VJP.

        Args:
            losses: one scalar loss per task (every task, no other).
            step: the step number, as for :meth:`backward` (shares its counter).
            features: the shared trunk's output tensor(s) for strategy ``"features"``.
            rows: task -> its batch rows (dimension 0) for strategy ``"rows"``.
        """
        self._step_call("observe", losses, step, features, rows)

    def _step_call(
        self,
        caller: str,
        losses: Mapping[str, Tensor],
        step: int | None,
        features: Tensor | Sequence[Tensor] | None,
        rows: Mapping[str, rows_mod.RowSpec] | None,
    ) -> None:
        train = caller == "backward"
        if not self._active:
            raise RuntimeError(
                f"Recorder.{caller}() called outside its `with gradcomp.record(...)` block"
            )
        ordered = check_losses(losses, self.tasks)
        step = self._counter if step is None else self._check_step(step)
        self._counter = step + 1
        self._last_step = step
        if not self._reach_checked and not self._compiled and has_compiled_node(ordered):
            self._compiled = True
            if self.strategy == "rows":
                raise rows_error()
        if self.layout is None:
            if self._compiled:  # one compiled node reaches every parameter: use gradients
                named = named_parameters(self.model)
                per_task = dict(zip(self.tasks, ordered, strict=True))
                names, self._reached = discover_shared_by_grad(named, per_task)
            else:
                names = discover_shared(self.model, losses)
            self.layout = make_layout(self.model, names, self.config.layers)
        if not self._reach_checked:
            if self._reached is not None:
                check_reached(self._reached, self.layout.names)
            self._check_reach(ordered)
            self._reach_checked = True
            self._choice.restrict(self.layout)
        weights = [self.weights[t] for t in self.tasks]
        if train and not self._schedule(step):
            self._plain(ordered, weights)
            self._choice.arm(self._counter)
            return
        self._record(step, ordered, weights, features, rows, train)
        self._recorded += 1
        self._choice.arm(self._counter)
        if self.flush_every and self._recorded % self.flush_every == 0:
            self.flush()

    def to_dataset(self) -> xr.Dataset:
        """Every recorded step as a Dataset (variables as in ``docs/data-model.md``): the steps
        flushed to ``path`` (read back from the file) followed by those held in memory."""
        if self.layout is None:
            raise ValueError("nothing recorded yet: call rec.backward(...) inside the with block")
        return self._steps.to_dataset(self.tasks, self.layout, self._config(), self._on_file())

    @property
    def nbytes(self) -> int:
        """Bytes of statistics held in memory: the steps recorded since the last flush to
        ``path`` (every step without ``path``), ``8 × (1 + T + (L+1)·T²)`` per step, plus
        ``8 × (L+1)·U·T²`` with ``units``, ``8 × T·N`` with ``store="full"`` and ``8 × T²``
        with ``rep_gram`` (``strategy="features"``)."""
        return self._steps.nbytes()

    def flush(self, path: str | PathLike[str] | None = None) -> None:
        """Write everything recorded so far to ``path`` (default: ``record(path=...)``).

        To the recorder's own ``path``, the steps held in memory are appended to the file and
        dropped from memory; to another path, the whole recording is written (the recorder's
        file copied, then the steps held appended) and memory is unchanged. Both atomically.
        """
        if self.layout is None:
            raise ValueError("nothing recorded yet: call rec.backward(...) inside the with block")
        target = path if path is not None else self.path
        if target is None:
            raise ValueError("flush() needs a path: pass flush(path) or record(..., path=...)")
        own = self.path is not None and _same_file(target, self.path)
        if own and self._flushed and not len(self._steps):
            return  # nothing new
        held = len(self._steps)
        from_zarr = self._flushed and self.path is not None and is_zarr(self.path)
        if own and is_zarr(target):  # only the new steps are written
            new = self._steps.to_dataset(self.tasks, self.layout, self._config())
            append_zarr(new, target, self._flushed, check=not self._appended)
            self._appended = True
        elif not own and (from_zarr or is_zarr(target)):  # another path: the whole recording
            whole = self.to_dataset()
            if is_zarr(target):
                append_zarr(whole, target, 0)
            else:
                write_netcdf(whole, target)
        else:  # netCDF: the file copied, the held steps appended
            base = self.path if self._flushed else None
            new = self._steps.to_dataset(self.tasks, self.layout, self._config())
            append_netcdf(new, target, base)
        if own:
            self._flushed += held
            self._steps.clear()

    @property
    def latest(self) -> tuple[int, np.ndarray, np.ndarray] | None:
        """The most recently recorded step as ``(step, loss [T], gram [L+1, T, T])`` (float64
        host arrays; ``grad_norm`` and ``cosine`` follow from ``gram``), flushed or not;
        ``None`` before the first recorded step. For trainer loggers."""
        if self._latest is None:
            return None
        step, loss, gram = self._latest
        return step, loss.numpy(), gram.detach().to(torch.float64).cpu().numpy()

    def resume(self, before: int) -> int:
        """Continue the recording already at ``path`` (e.g. after resuming from a checkpoint).

        The file's steps numbered below ``before`` are kept (later ones, recorded after the
        checkpoint being resumed, are dropped, atomically), new steps are appended after them and
        must be numbered ``before`` or later. Call inside the ``with`` block, before the first
        ``backward``/``observe``. A missing file starts a new recording.

        Args:
            before: the first step of the resumed run (its ``global_step``).

        Returns:
            The number of steps kept.
        """
        if self.path is None:
            raise ValueError("resume() needs record(..., path=...): the recording to continue")
        if self.layout is not None and (self._recorded or len(self._steps)):
            raise ValueError("resume() must come before the first recorded step")
        kept, last = keep_steps(self.path, before)
        self._flushed = kept
        if last is not None:
            self._last_step = last
            self._counter = max(last + 1, operator.index(before))
        return kept

    # -- internals ----------------------------------------------------------------------------
    def _config(self) -> dict[str, Any]:
        return self.config.attrs(self._used)

    def _check_step(self, step: int) -> int:
        """An explicit ``step=``: an int larger than the previous call's step."""
        try:
            value = operator.index(step)
        except TypeError:
            raise TypeError(f"step= must be an int, got {step!r}") from None
        if self._last_step is not None and value <= self._last_step:
            raise ValueError(
                f"step={value} does not follow the previous step {self._last_step}: step= values "
                "must increase from call to call (each training step is recorded once, in order)"
            )
        return value

    def _on_file(self) -> dict[str, Any] | None:
        """The step arrays flushed to ``path``, read back (``None`` if nothing was flushed)."""
        if not self._flushed:
            return None
        assert self.path is not None and self.layout is not None
        names = [STEP, "loss", "gram"]
        names += ["unit_gram"] if self.units else []
        names += ["grad"] if self.store == "full" else []
        names += ["rep_gram"] if self._rep_gram else []
        return read_steps(self.path, names, self._flushed)

    def _check_gradients(
        self, step: int, gram: Tensor, unit: Tensor | None, loss_bad: Tensor, train: bool = True
    ) -> tuple[Tensor, Tensor | None]:
        """Warn (or raise) for tasks with a finite loss and a non-finite gradient.

        A per-task gradient on a layer is non-finite iff the layer's Gram diagonal
        ``gram[l, t, t] = ‖g_t‖²`` is (or the square sum overflowed); those tasks' rows and
        columns of that layer's ``gram`` (and ``unit_gram``) become NaN.
        """
        diag = gram.diagonal(dim1=-2, dim2=-1)  # [L + 1, T]
        if bool(torch.isfinite(diag).all()):  # the usual case: one synchronisation per step
            return gram, unit
        layer_bad = ~torch.isfinite(diag)
        worst = layer_bad.any(0).cpu() & ~loss_bad
        if not worst.any():
            return gram, unit
        assert self.layout is not None
        names = [t for t, b in zip(self.tasks, worst.tolist(), strict=True) if b]
        hit = (layer_bad.cpu() & worst).any(1).tolist()
        layers = [name for name, h in zip(self.layout.layer_coord, hit, strict=True) if h]
        msg = (
            f"non-finite gradient for task(s) {names} at step {step} although their loss is "
            f"finite (layer(s) {layers})"
        )
        if self.on_nonfinite == "raise":
            held = "; .grad holds the training gradient" if train else ""
            raise ValueError(msg + f" (on_nonfinite='raise'{held})")
        warnings.warn(
            msg + "; their statistics there are NaN", NonfiniteGradientWarning, stacklevel=5
        )
        m = layer_bad & worst.to(layer_bad.device)[None]
        pair = m[:, :, None] | m[:, None, :]
        gram = gram.masked_fill(pair, float("nan"))
        if unit is not None:
            unit = unit.masked_fill(pair[:, None], float("nan"))
        return gram, unit

    def _check_reach(self, ordered: Sequence[Tensor]) -> None:
        assert self.layout is not None
        ids = {id(p) for p in self.layout.params}
        for t, loss in zip(self.tasks, ordered, strict=True):
            if not any(id(x) in ids for x in reachable_leaves([loss])):
                raise ValueError(
                    f"task {t!r} reaches no shared parameter; check shared= or the task's loss"
                )

    def _plain(self, ordered: Sequence[Tensor], weights: Sequence[float]) -> None:
        weighted_total(ordered, weights).backward()

    def _record(
        self,
        step: int,
        ordered: list[Tensor],
        weights: list[float],
        feats: Any,
        rows: Any,
        train: bool = True,
    ) -> None:
        assert self.layout is not None
        with torch.no_grad():  # (the float64 of each loss, exactly)
            same = all(x.dtype == ordered[0].dtype for x in ordered)
            values = torch.stack(ordered if same else [x.double() for x in ordered])
        values = values.to(torch.float64).cpu()
        bad = ~torch.isfinite(values)
        any_bad = bool(bad.any())
        if any_bad:
            names = [t for t, b in zip(self.tasks, bad.tolist(), strict=True) if b]
            msg = f"non-finite loss for task(s) {names} at step {step}"
            if self.on_nonfinite == "raise":
                raise ValueError(msg + " (on_nonfinite='raise')")
            warnings.warn(msg + "; their statistics are NaN", NonfiniteLossWarning, stacklevel=4)
        choice = self._choice
        device = ordered[0].device
        strategy = choice.choose(
            feats, rows, device, layout=self.layout, compiled=self._compiled, step=self._counter
        )
        strategy, result, delegated = choice.run(
            strategy, ordered, weights, features=feats, rows=rows, layout=self.layout,
            compiled=self._compiled, train=train,
        )  # fmt: skip
        full = None
        rep = result.rep
        if result.stacks is not None:
            stacks = result.stacks
            if delegated:  # DDP syncs .grad in its backward hooks: run a real backward
                weighted_total(ordered, weights).backward()
            if self.reduce is not None:
                stacks = [self.reduce(s) for s in stacks]
            gram, unit = layer_stats(stacks, self.layout, self.units)
            if self.store == "full":
                full = torch.cat([s.detach().reshape(len(ordered), -1).cpu() for s in stacks], 1)
        else:
            gram, unit = to_layers(result.stats, self.layout)
        if any_bad:
            b = bad.to(gram.device)
            gram[..., b, :] = float("nan")
            gram[..., :, b] = float("nan")
            if unit is not None:
                unit[..., b, :] = float("nan")
                unit[..., :, b] = float("nan")
            if full is not None:
                full[bad] = float("nan")
            if rep is not None:
                rep = rep.masked_fill((b[:, None] | b[None, :]).to(rep.device), float("nan"))
            values = torch.where(bad, torch.nan, values)
        gram, unit = self._check_gradients(step, gram, unit, bad, train)
        if not self._rep_gram:
            rep = None
        self._steps.add(step, values, gram, unit, full, rep)
        self._latest = (step, values, gram.detach())
        self._used.add(strategy)


def _same_file(a: str | PathLike[str], b: str | PathLike[str]) -> bool:
    return os.path.abspath(os.fspath(a)) == os.path.abspath(os.fspath(b))
