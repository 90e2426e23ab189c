"""Shared by both trainer integrations: one recording inside a trainer's own loop.

Two ways to see a step's per-task losses, both leaving training untouched:

- **no replay** (the trainer mixins): the per-task losses of the trainer's *real* forward are
  handed to ``Recorder.observe`` just before the trainer's own backward. ``observe`` computes the
  per-task gradients from the same graph and leaves ``.grad`` alone, so the trainer's backward
  (gradient accumulation, GradScaler, DDP synchronisation, clipping) runs exactly as without
  recording. Cost at a recorded step: the recorder's per-task reverse passes, no forward.
- **replay** (the callbacks, for models or trainers you cannot change): after the trainer's
  backward and before its optimizer step, the step's forward is re-run on the same inputs with the
  random-number state the trainer's forward saw (same dropout masks) and observed; every buffer
  (BatchNorm running statistics) and the random-number state are restored. Cost: one extra forward
  plus the per-task passes.

Around both: only rank 0 writes, and under ``DistributedDataParallel`` the statistics are those of
the global batch (:func:`gradcomp.scaleout.ddp.record_ddp`); with a GradScaler the per-task
gradients are those of the scaled losses ``s·L_t`` (as the trainer's backward, so fp16 gradients
do not underflow) divided by ``s`` before the Gram, i.e. the statistics of the unscaled gradients;
the scalars of :func:`scalars` go to the trainer's loggers every ``log_every`` steps; a run
resumed at step k keeps the recording's steps before k and appends. Sharded parameters (FSDP,
``fully_shard``, DeepSpeed ZeRO-3) are refused before training.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from os import PathLike, fspath
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from gradcomp.gram import cosine, grad_norm
from gradcomp.recorder.config import RecordConfig
from gradcomp.schedule import Schedule

__all__ = ["Recording", "Replay", "check_unsharded", "default_losses", "scalars"]


def default_losses(output: Any) -> Mapping[str, Tensor]:
    """Per-task losses from a model output: ``output["losses"]`` or ``output.losses``."""
    losses = None
    if isinstance(output, Mapping):
        losses = output.get("losses")
    if losses is None:
        losses = getattr(output, "losses", None)
    if not isinstance(losses, Mapping) or not losses:
        raise ValueError(
            "the model's output has no per-task losses: return a dict task -> scalar loss as "
            "output['losses'] (or output.losses), or pass get_losses=callable(output) -> dict"
        )
    return losses


def scalars(tasks: list[str], layers: list[str], gram: np.ndarray) -> dict[str, float]:
    """The logged scalars of one recorded step, from its Gram ``[L+1, T, T]``.

    ``gradcomp/grad_norm/{layer}/{t}`` = √gram_tt; ``gradcomp/cosine/{layer}/{t}__{s}`` (t before
    s in task order) = gram_ts / (‖g_t‖‖g_s‖); ``gradcomp/conflict_share/{layer}`` = the share of
    task pairs with a negative cosine (pairs with a NaN cosine left out; NaN if none is left).
    """
    norm, cos = grad_norm(gram), cosine(gram)
    out: dict[str, float] = {}
    for i, layer in enumerate(layers):
        for a, t in enumerate(tasks):
            out[f"gradcomp/grad_norm/{layer}/{t}"] = float(norm[i, a])
        pairs = []
        for a, t in enumerate(tasks):
            for b in range(a + 1, len(tasks)):
                c = float(cos[i, a, b])
                out[f"gradcomp/cosine/{layer}/{t}__{tasks[b]}"] = c
                if not math.isnan(c):
                    pairs.append(c < 0)
        out[f"gradcomp/conflict_share/{layer}"] = float(np.mean(pairs)) if pairs else math.nan
    return out


def check_unsharded(model: nn.Module, *, strategy: Any = None, args: Any = None) -> None:
    """Raise a ``ValueError`` if the parameters are (or will be) sharded across ranks.

    Under FSDP (``FullyShardedDataParallel``, ``fully_shard``'s DTensor parameters) or DeepSpeed
    ZeRO-3 each rank holds a shard of every parameter, so its per-task gradients and their Gram
    would be partial. Looks at the model, a Lightning ``strategy`` and Hugging Face
    ``TrainingArguments``.
    """
    reason = None
    fsdp = torch.distributed.fsdp if torch.distributed.is_available() else None
    kinds = tuple(
        k
        for k in (
            getattr(fsdp, "FullyShardedDataParallel", None),
            getattr(fsdp, "FSDPModule", None),
        )
        if k is not None
    )
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        DTensor = ()  # type: ignore[assignment,misc]
    if kinds and any(isinstance(m, kinds) for m in model.modules()):
        reason = "the model is wrapped by FSDP (FullyShardedDataParallel / fully_shard)"
    elif any(isinstance(p, DTensor) for p in model.parameters()):
        reason = "the parameters are DTensors (FSDP2 fully_shard or tensor parallelism)"
    elif any(hasattr(p, "ds_id") for p in model.parameters()):
        reason = "the parameters are partitioned by DeepSpeed ZeRO-3"
    elif strategy is not None and "fsdp" in type(strategy).__name__.lower():
        reason = f"the Lightning strategy is {type(strategy).__name__}"
    elif strategy is not None and getattr(strategy, "zero_stage_3", False):
        reason = "the Lightning DeepSpeed strategy runs ZeRO stage 3"
    elif args is not None and getattr(args, "fsdp", None):
        reason = f"TrainingArguments(fsdp={args.fsdp!r})"
    elif args is not None and getattr(args, "deepspeed", None) and _hf_zero3():
        reason = "TrainingArguments(deepspeed=...) runs ZeRO stage 3"
    if reason is not None:
        raise ValueError(
            f"gradcomp cannot record sharded parameters: {reason}. Each rank holds only a shard "
            "of every parameter, so its per-task gradients (and their Gram) would be partial. "
            "Record under DistributedDataParallel (or DeepSpeed ZeRO stage <= 2) instead."
        )


def _hf_zero3() -> bool:
    try:
        from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
    except ImportError:  # pragma: no cover
        return False
    return bool(is_deepspeed_zero3_enabled())


def _world() -> tuple[int, int]:
    d = torch.distributed
    if d.is_available() and d.is_initialized():
        return d.get_rank(), d.get_world_size()
    return 0, 1


class _Unscale:
    """``reduce=``: divide the stacked per-task gradients of ``s·L_t`` by the scale ``s``
    (after ``inner``, e.g. the DDP mean over ranks)."""

    __name__ = "unscale"

    def __init__(self, inner: Callable[[Tensor], Tensor] | None) -> None:
        self.inner = inner
        self.scale = 1.0
        if inner is not None:
            self.__name__ = f"{getattr(inner, '__name__', 'callable')}+unscale"

    def __call__(self, stack: Tensor) -> Tensor:
        out = stack if self.inner is None else self.inner(stack)
        return out if self.scale == 1.0 else out / self.scale


def _scaled(losses: Mapping[str, Tensor], scale: float) -> dict[str, Tensor]:
    """Losses whose value is ``L_t`` and whose gradient is that of ``s·L_t`` (float64 values, so
    the value is exact for a power-of-two scale)."""
    out = {}
    for name, loss in losses.items():
        big = (loss * scale).double()
        out[name] = big + (loss.detach().double() - big.detach())
    return out


def _rng_state(device: torch.device | None) -> tuple[Tensor, Tensor | None]:
    cuda = None
    if device is not None and device.type == "cuda":
        cuda = torch.cuda.get_rng_state(device)
    return torch.get_rng_state(), cuda


class Recording:
    """Recorder + schedule + ranks + scaler + logging + resume, for one training run.

    Args:
        tasks: task names (or name -> weight) as for :func:`gradcomp.record`.
        record_kwargs: keyword arguments of :func:`gradcomp.record` (``every`` included),
            validated here into one :class:`~gradcomp.recorder.config.RecordConfig`
            (``self.config``).
        get_losses: ``output -> {task: loss}`` (default :func:`default_losses`).
        log_every: send :func:`scalars` to the trainer's loggers at a recorded step at least this
            many steps after the last one sent (the first recorded step is sent); ``None``: the
            trainer's own logging interval; ``0``: never.
    """

    def __init__(
        self,
        tasks: Any,
        record_kwargs: dict[str, Any],
        get_losses: Callable[[Any], Mapping[str, Tensor]] | None = None,
        log_every: int | None = None,
    ) -> None:
        if log_every is not None and (not isinstance(log_every, int) or log_every < 0):
            raise ValueError(f"log_every must be a non-negative int or None, got {log_every!r}")
        self.tasks = tasks
        self.config = RecordConfig(tasks, **record_kwargs)
        self.schedule: Schedule = self.config.schedule
        self.get_losses = get_losses or default_losses
        self.log_every = log_every
        self.recorder: Any = None
        self.rank = 0
        self._open = False
        self._rng: tuple[Tensor, Tensor | None] | None = None
        self._unscale: _Unscale | None = None
        self._scaler: Any = None
        self._last: int | None = None  # last recorded step
        self._logged: int | None = None  # last step sent to the loggers
        self.steps_recorded = 0  # in this recording, resumed steps included

    # -- lifecycle -------------------------------------------------------------------------------
    def start(
        self,
        model: nn.Module,
        *,
        ddp: nn.Module | None = None,
        scaler: Any = None,
        resume_at: int = 0,
        log_every: int = 0,
    ) -> None:
        """Open the recorder on ``model``.

        Args:
            model: the unwrapped model whose parameters are recorded.
            ddp: the ``DistributedDataParallel`` wrapper around it, if any (required when
                ``torch.distributed`` runs more than one rank).
            scaler: the trainer's ``GradScaler`` (or ``None``).
            resume_at: the trainer's step when training starts: > 0 resumes the recording at
                ``path`` (its steps before ``resume_at`` kept).
            log_every: the trainer's logging interval (used when ``log_every=None``).
        """
        from gradcomp.recorder.core import Recorder

        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError(
                "the model has no trainable parameters, so no shared parameters to record"
            )
        self.stop()
        if self.log_every is None:
            self.log_every = int(log_every)
        self.rank, world = _world()
        config = self.config
        self._scaler = scaler if scaler is not None and _enabled(scaler) else None
        self._unscale = None
        rec: Any
        if world > 1:
            if ddp is None or not isinstance(ddp, nn.parallel.DistributedDataParallel):
                raise ValueError(
                    f"torch.distributed runs {world} ranks but the model is not wrapped in "
                    "DistributedDataParallel: gradcomp records only DDP (each rank's statistics "
                    "would describe its local batch). A Hugging Face callback sees the DDP "
                    "wrapper through the Trainer: use GradcompTrainerMixin or cb.attach(trainer)"
                )
            if config.reduce is not None:
                raise ValueError("under DDP the reduction is the mean over ranks: drop reduce=")
            from gradcomp.scaleout.ddp import DDPRecorder, ddp_config

            config = ddp_config(config)
            if self._scaler is not None:
                self._unscale = _Unscale(config.reduce)
                config = replace(config, reduce=self._unscale)
            rec = DDPRecorder(Recorder.from_config(ddp, config), None, self.rank)
        else:
            if self._scaler is not None:
                self._unscale = _Unscale(config.reduce)
                config = replace(config, reduce=self._unscale)
            rec = Recorder.from_config(model, config)
        self.recorder = rec.__enter__()
        self._open = True
        self._last = None
        self.steps_recorded = 0
        if resume_at > 0:
            inner = getattr(rec, "recorder", rec)
            if inner.path is not None:
                self.steps_recorded = inner.resume(resume_at)
            self._last = resume_at - 1

    def stop(self) -> None:
        """Close the recorder (flushes to ``path`` on rank 0 when one was given)."""
        if self._open:
            self._open = False
            self.recorder.__exit__(None, None, None)

    def flush(self) -> None:
        """Write what is held to ``path`` (rank 0; e.g. when the trainer saves a checkpoint)."""
        inner = getattr(self.recorder, "recorder", self.recorder)
        if self._open and inner is not None and inner.path is not None and inner.latest:
            self.recorder.flush()

    @property
    def path(self) -> str | None:
        inner = getattr(self.recorder, "recorder", self.recorder)
        path = None if inner is None else inner.path
        if path is None and self.rank == 0:
            path = self.config.path
        return None if path is None else fspath(path)

    # -- recording -------------------------------------------------------------------------------
    def due(self, step: int) -> bool:
        """Open, scheduled, and not yet recorded (the first micro-batch of a step is recorded)."""
        return (
            self._open and (self._last is None or step > self._last) and bool(self.schedule(step))
        )

    def observe(self, losses: Mapping[str, Tensor], step: int) -> None:
        """Record ``losses`` (of the real forward) at ``step``; ``.grad`` untouched."""
        scale = 1.0
        if self._scaler is not None and self._unscale is not None:
            scale = float(self._scaler.get_scale())
            self._unscale.scale = scale
        given = dict(losses) if scale == 1.0 else _scaled(losses, scale)
        self.recorder.observe(given, step=step)
        self._last = step
        self.steps_recorded += 1

    def remember_rng(self, device: torch.device | None) -> None:
        """Call just before the trainer's forward: the replay will see the same random state."""
        self._rng = _rng_state(device)

    def replay(
        self,
        model: nn.Module,
        forward: Callable[[], Any],
        step: int,
        context: contextlib.AbstractContextManager[Any] | None = None,
    ) -> None:
        """Re-run ``forward()`` and record its per-task losses at ``step``; buffers and the
        random-number state are restored (``observe`` leaves ``.grad`` alone)."""
        params = [p for p in model.parameters() if p.requires_grad]
        buffers = [(b, b.detach().clone()) for b in model.buffers()]
        devices = [] if self._rng is None or self._rng[1] is None else [params[0].device]
        try:
            with torch.random.fork_rng(devices=devices):
                if self._rng is not None:
                    torch.set_rng_state(self._rng[0])
                    if self._rng[1] is not None:
                        torch.cuda.set_rng_state(self._rng[1], params[0].device)
                with context or contextlib.nullcontext():
                    output = forward()
                self.observe(self.get_losses(output), step)
        finally:
            with torch.no_grad():
                for b, value in buffers:
                    b.copy_(value)

    # -- logging ---------------------------------------------------------------------------------
    def pending_scalars(self) -> tuple[int, dict[str, float]] | None:
        """``(step, scalars)`` of the step just recorded when it is due for the loggers."""
        if not self.log_every or self._last is None or self.recorder is None:
            return None
        inner = getattr(self.recorder, "recorder", self.recorder)
        latest = inner.latest
        if latest is None or latest[0] != self._last:
            return None
        if self._logged is not None and self._last - self._logged < self.log_every:
            return None
        self._logged = self._last
        step, _, gram = latest
        assert inner.layout is not None
        return step, scalars(list(inner.tasks), list(inner.layout.layer_coord), gram)

    def to_dataset(self) -> Any:
        if self.recorder is None:
            raise ValueError("nothing recorded: the callback has not seen a training run yet")
        return self.recorder.to_dataset()


#: the name the replay callbacks used before the no-replay path existed
Replay = Recording


def _enabled(scaler: Any) -> bool:
    check = getattr(scaler, "is_enabled", None)
    return bool(check()) if callable(check) else True


def same_path(a: str | PathLike[str] | None, b: str | PathLike[str] | None) -> bool:
    import os

    if a is None or b is None:
        return a is b
    return os.path.abspath(fspath(a)) == os.path.abspath(fspath(b))
