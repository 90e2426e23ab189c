"""Hugging Face ``transformers``: a ``TrainerCallback`` that records per-task gradient statistics,
and a ``Trainer`` mixin that lets it record on the real forward and backward (no replay).

The model's forward returns its per-task losses next to the training loss, e.g.
``{"loss": la + lb, "losses": {"a": la, "b": lb}, ...}`` (or pass ``get_losses``).

**No replay**: ``class MyTrainer(GradcompTrainerMixin, Trainer)``. Its ``compute_loss`` hands the
per-task losses of the real forward to the recorder's ``observe`` (``.grad`` untouched) before the
Trainer's own backward, which then runs as without recording. No extra forward.

**Replay** (a plain ``Trainer``): at every scheduled optimizer step (``on_pre_optimizer_step``,
transformers >= 4.45) the callback re-runs that step's forward (same inputs, same random state,
same autocast) and observes its per-task losses, restoring buffers (see
:mod:`gradcomp.integrations._common`).

Both: ``step`` is ``state.global_step`` before the update; with gradient accumulation the first
micro-batch of each optimizer step is recorded (replay: the last). Under DDP the statistics are of
the global batch (:func:`gradcomp.scaleout.ddp.record_ddp`, layer names with DDP's ``module.``
prefix) and only rank 0 writes ``path``; the callback reaches the DDP wrapper through the Trainer
(the mixin, or :meth:`GradcompCallback.attach`). With ``fp16`` the statistics are of the unscaled
gradients. Every ``log_every`` steps (default ``args.logging_steps``) the scalars of
:func:`gradcomp.integrations._common.scalars` go through ``Trainer.log`` to every ``report_to``
integration (TensorBoard adds its ``train/`` prefix); this needs the Trainer (mixin or
``attach``). ``on_save`` flushes the recording; a run resumed from a checkpoint at step k keeps
the file's steps before k and appends. FSDP and DeepSpeed ZeRO-3 raise a ``ValueError``.

Example::

    cb = GradcompCallback(["a", "b"], every=gradcomp.logarithmic(1, 1000), path="rec.nc")

    class MyTrainer(GradcompTrainerMixin, Trainer):
        pass

    MyTrainer(model, args, train_dataset=ds, callbacks=[cb]).train()
    cb.to_dataset()   # the same Dataset as gradcomp.record(...).to_dataset()
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from packaging.version import Version
from transformers import TrainerCallback

from gradcomp.integrations._common import Recording, check_unsharded

__all__ = ["MIN_TRANSFORMERS", "GradcompCallback", "GradcompTrainerMixin"]

#: ``TrainerCallback.on_pre_optimizer_step`` first appears in 4.45
MIN_TRANSFORMERS = "4.45"


def _check_version() -> None:
    import transformers  # the module now in sys.modules (transformers replaces its lazy module)

    found = getattr(transformers, "__version__", "0")
    if Version(found) < Version(MIN_TRANSFORMERS) or not hasattr(
        TrainerCallback, "on_pre_optimizer_step"
    ):
        raise ImportError(
            f"GradcompCallback needs transformers >= {MIN_TRANSFORMERS} (the callback event "
            f"on_pre_optimizer_step); found {found}: without it nothing would be recorded"
        )


class GradcompCallback(TrainerCallback):
    """Record per-task gradient statistics during ``Trainer.train()``.

    Args:
        tasks: task names, or name -> loss weight (as :func:`gradcomp.record`).
        get_losses: ``model output -> {task: loss}``; default ``output["losses"]``.
        log_every: steps between the scalars sent to ``Trainer.log``; ``None``:
            ``args.logging_steps``; ``0``: none.
        **record_kwargs: any option of :func:`gradcomp.record` (``shared``, ``layers``,
            ``every``, ``strategy``, ``units``, ``store``, ``path``, ``flush_every``,
            ``on_nonfinite``, ``reduce``).
    """

    def __init__(
        self,
        tasks: Sequence[str] | Mapping[str, float],
        *,
        get_losses: Callable[[Any], Mapping[str, torch.Tensor]] | None = None,
        log_every: int | None = None,
        **record_kwargs: Any,
    ) -> None:
        _check_version()
        self._rec = Recording(tasks, record_kwargs, get_losses, log_every=log_every)
        self._inputs: dict[str, Any] | None = None
        self._handle: Any = None
        self._trainer: Any = None
        self._native = False

    def attach(self, trainer: Any) -> Any:
        """Add this callback to ``trainer`` and let it log through ``trainer.log`` and reach the
        DDP wrapper and the GradScaler (a plain ``Trainer``; the mixin does this itself)."""
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        self._trainer = trainer
        return trainer

    # -- lifecycle ------------------------------------------------------------------------------
    def on_init_end(self, args, state, control, model=None, **kwargs):
        if model is not None:
            check_unsharded(model, args=args)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise ValueError("GradcompCallback needs the Trainer's model (Trainer passes it)")
        check_unsharded(model, args=args)
        trainer = self._trainer
        wrapped = getattr(trainer, "model_wrapped", None)
        ddp = wrapped if isinstance(wrapped, torch.nn.parallel.DistributedDataParallel) else None
        accelerator = getattr(trainer, "accelerator", None)
        self._rec.start(
            model,
            ddp=ddp,
            scaler=getattr(accelerator, "scaler", None),
            resume_at=int(state.global_step),
            log_every=int(args.logging_steps) if trainer is not None else 0,
        )
        if not self._native:
            self._handle = model.register_forward_pre_hook(self._capture, with_kwargs=True)
        self._model = model

    def on_save(self, args, state, control, **kwargs):
        self._rec.flush()  # the checkpoint and the recording agree

    def on_train_end(self, args, state, control, **kwargs):
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._inputs = None
        self._rec.stop()

    # -- recording -------------------------------------------------------------------------------
    def record_output(self, output: Any, step: int) -> None:
        """No replay: observe the per-task losses of the real forward's ``output``."""
        if self._rec.due(step):
            self._rec.observe(self._rec.get_losses(output), step)
            self._log()

    def _capture(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if module.training and torch.is_grad_enabled():
            self._inputs = {"args": args, "kwargs": kwargs}
            device = next(module.parameters()).device
            self._rec.remember_rng(device)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        step = int(state.global_step)
        if self._native or self._inputs is None or not self._rec.due(step):
            return
        inputs = self._inputs
        target = model if model is not None else self._model
        self._rec.replay(
            target,
            lambda: target(*inputs["args"], **inputs["kwargs"]),
            step,
            _autocast(args, next(target.parameters()).device),
        )
        self._log()

    def _log(self) -> None:
        pending = self._rec.pending_scalars()
        if pending is not None and self._trainer is not None:
            self._trainer.log(pending[1])  # Trainer.log: state.global_step == the step recorded

    def to_dataset(self) -> Any:
        """The recording as a Dataset (as ``gradcomp.record(...).to_dataset()``)."""
        return self._rec.to_dataset()


class GradcompTrainerMixin:
    """``class MyTrainer(GradcompTrainerMixin, Trainer)``: the :class:`GradcompCallback` in
    ``callbacks=`` records on the real forward and backward (no replay) and logs through
    ``self.log``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        handler = self.callback_handler  # type: ignore[attr-defined]
        found = [c for c in handler.callbacks if isinstance(c, GradcompCallback)]
        if len(found) != 1:
            raise ValueError(
                "GradcompTrainerMixin needs exactly one GradcompCallback in callbacks= "
                f"(found {len(found)})"
            )
        self._gradcomp = found[0]
        self._gradcomp._trainer = self
        self._gradcomp._native = True

    def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False, **kwargs: Any):
        loss, outputs = super().compute_loss(  # type: ignore[misc]
            model, inputs, return_outputs=True, **kwargs
        )
        if model.training and torch.is_grad_enabled():
            self._gradcomp.record_output(outputs, int(self.state.global_step))  # type: ignore[attr-defined]
        return (loss, outputs) if return_outputs else loss


def _autocast(args: Any, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if getattr(args, "bf16", False):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if getattr(args, "fp16", False):
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()
