"""PyTorch Lightning: a ``Callback`` that records per-task gradient statistics, and a module mixin
that lets it record on the real forward and backward (no replay).

**No replay** (you can change the LightningModule): mix in :class:`GradcompLightningMixin` and
return ``self.training_loss(losses)`` from ``training_step`` (automatic optimisation) or pass it to
``self.manual_backward`` (manual). Just before Lightning's backward (``on_before_backward``) the
callback hands those per-task losses to the recorder's ``observe``, which leaves ``.grad`` alone;
Lightning's backward then runs as without recording. No extra forward.

**Replay** (a module you cannot change): the module has ``task_losses(batch) -> {task: loss}`` (or
pass ``get_losses(pl_module, batch)``). After Lightning's backward and before the optimizer step,
the callback re-runs the forward on the step's batch (same random state, same precision context)
and observes its per-task losses, restoring buffers (see :mod:`gradcomp.integrations._common`).

Both: ``step`` is ``trainer.global_step`` before the update; with gradient accumulation the first
micro-batch of each optimizer step is recorded (replay: the last). Under DDP the statistics are of
the global batch (:func:`gradcomp.scaleout.ddp.record_ddp`; layer names then carry DDP's
``module._forward_module.`` prefix) and only rank 0 writes ``path``. With 16-bit mixed precision
the statistics are of the unscaled gradients. Every ``log_every`` steps (default: the Trainer's
``log_every_n_steps``) the scalars of :func:`gradcomp.integrations._common.scalars` go to every
logger of the Trainer (``logger.log_metrics(..., step=step)``). The callback's ``state_dict`` holds
the path and the number of steps recorded; a checkpoint flushes the recording first, and a run
resumed from it at step k continues the file (its steps before k kept, new ones appended).
FSDP and DeepSpeed ZeRO-3 raise a ``ValueError`` before training. Needs Lightning >= 2.0.

Example::

    cb = GradcompLightningCallback(["a", "b"], every=10, path="rec.nc", log_every=50)

    class Module(GradcompLightningMixin, pl.LightningModule):
        def training_step(self, batch, batch_idx):
            return self.training_loss(self.net(batch))  # {task: loss} -> Σ w_t L_t

    pl.Trainer(max_steps=100, callbacks=[cb]).fit(Module(), loader)
    cb.to_dataset()
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from packaging.version import Version

try:
    import lightning.pytorch as _pl
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the standalone package
    import pytorch_lightning as _pl
    from pytorch_lightning.callbacks import Callback

from gradcomp.integrations._common import Recording, check_unsharded, same_path

__all__ = ["MIN_LIGHTNING", "GradcompLightningCallback", "GradcompLightningMixin"]

#: ``on_before_optimizer_step(trainer, pl_module, optimizer)`` (no ``opt_idx``) is 2.0's
MIN_LIGHTNING = "2.0"


def _default(pl_module: Any, batch: Any) -> Mapping[str, torch.Tensor]:
    return pl_module.task_losses(batch)


def _check_version() -> None:
    found = getattr(_pl, "__version__", "0")
    if Version(found) < Version(MIN_LIGHTNING):
        raise ImportError(
            f"GradcompLightningCallback needs Lightning >= {MIN_LIGHTNING} (the hook "
            f"on_before_optimizer_step(trainer, pl_module, optimizer)); found {found}"
        )


class GradcompLightningCallback(Callback):
    """Record per-task gradient statistics during ``Trainer.fit``.

    ``tasks`` (names, or name -> loss weight) and ``**record_kwargs`` (any of its options) are
    passed to :func:`gradcomp.record`.

    Args:
        get_losses: ``(pl_module, batch) -> {task: loss}`` for the replay; default
            ``pl_module.task_losses``. Not used for a module with
            :class:`GradcompLightningMixin`.
        log_every: steps between the scalars sent to the Trainer's loggers; ``None``: the
            Trainer's ``log_every_n_steps``; ``0``: none.
    """

    def __init__(
        self,
        tasks: Sequence[str] | Mapping[str, float],
        *,
        get_losses: Callable[[Any, Any], Mapping[str, torch.Tensor]] | None = None,
        log_every: int | None = None,
        **record_kwargs: Any,
    ) -> None:
        _check_version()
        super().__init__()
        self._get = get_losses or _default
        self._rec = Recording(tasks, record_kwargs, get_losses=lambda out: out, log_every=log_every)
        self._batch: Any = None
        self._state: dict[str, Any] | None = None

    @property
    def weights(self) -> dict[str, float]:
        """Task -> loss weight."""
        from gradcomp.recorder._inputs import task_weights

        return dict(task_weights(self._rec.tasks))

    # -- lifecycle ------------------------------------------------------------------------------
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        native = isinstance(pl_module, GradcompLightningMixin)
        if not native and self._get is _default:
            if not callable(getattr(pl_module, "task_losses", None)):
                raise ValueError(
                    f"{type(pl_module).__name__} has no task_losses(batch) method returning "
                    "{task: loss}; add one, pass get_losses=(pl_module, batch) -> dict, or mix "
                    "in GradcompLightningMixin and return self.training_loss(losses)"
                )
        strategy = getattr(trainer, "strategy", None)
        check_unsharded(pl_module, strategy=strategy)
        wrapped = getattr(strategy, "model", None)
        ddp = wrapped if isinstance(wrapped, torch.nn.parallel.DistributedDataParallel) else None
        plugin = getattr(trainer, "precision_plugin", None)
        step = int(trainer.global_step)
        if self._state is not None and not same_path(self._state.get("path"), self._rec.path):
            if self._state.get("path") is not None and self._rec.rank == 0:
                raise ValueError(
                    f"the checkpoint's recording is {self._state['path']}, this callback's "
                    f"path is {self._rec.config.path}: give the same path to resume"
                )
        self._rec.start(
            pl_module,
            ddp=ddp,
            scaler=getattr(plugin, "scaler", None),
            resume_at=step,
            log_every=int(getattr(trainer, "log_every_n_steps", 0) or 0),
        )
        if self._state is not None and self._rec.path is not None and step > 0:
            want = int(self._state.get("steps", 0))
            if self._rec.steps_recorded != want:
                raise ValueError(
                    f"{self._rec.path} holds {self._rec.steps_recorded} recorded step(s) before "
                    f"step {step}, the checkpoint says {want}: was it changed or replaced?"
                )

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._batch = None
        self._rec.stop()

    def state_dict(self) -> dict[str, Any]:
        """Saved in the checkpoint: the recording's path and steps (flushed to it first)."""
        self._rec.flush()
        return {"path": self._rec.path, "steps": self._rec.steps_recorded}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._state = dict(state_dict)

    # -- recording -------------------------------------------------------------------------------
    def record_losses(self, trainer: Any, losses: Mapping[str, torch.Tensor]) -> None:
        """No replay: observe the real forward's per-task losses (before its backward)."""
        step = int(trainer.global_step)
        if self._rec.due(step):
            self._rec.observe(losses, step)
            self._log(trainer)

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: torch.Tensor) -> None:
        losses = getattr(pl_module, "_gradcomp_losses", None)
        if losses is not None:
            pl_module._gradcomp_losses = None
            self.record_losses(trainer, losses)

    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        self._batch = batch
        self._rec.remember_rng(pl_module.device)

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        step = int(trainer.global_step)
        if isinstance(pl_module, GradcompLightningMixin):
            return  # recorded on the real backward
        if self._batch is None or not self._rec.due(step):
            return
        batch = self._batch
        self._rec.replay(
            pl_module,
            lambda: self._get(pl_module, batch),
            step,
            trainer.precision_plugin.forward_context(),
        )
        self._log(trainer)

    def _log(self, trainer: Any) -> None:
        pending = self._rec.pending_scalars()
        if pending is None:
            return
        step, values = pending
        for logger in getattr(trainer, "loggers", []):
            logger.log_metrics(values, step=step)  # rank_zero_only in Lightning's loggers

    def to_dataset(self) -> Any:
        """The recording as a Dataset (as ``gradcomp.record(...).to_dataset()``)."""
        return self._rec.to_dataset()


class GradcompLightningMixin:
    """Mix into a ``LightningModule`` so that :class:`GradcompLightningCallback` records on the
    real forward and backward (no replay).

    ``training_step`` returns ``self.training_loss({task: loss})`` (or, under manual
    optimisation, passes it to ``self.manual_backward``).
    """

    _gradcomp_losses: Mapping[str, torch.Tensor] | None = None

    def training_loss(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Remember the per-task losses for the callback; return ``Σ_t w_t L_t`` (the callback's
        task weights), the loss Lightning back-propagates."""
        trainer = getattr(self, "trainer", None)
        found = [
            c for c in getattr(trainer, "callbacks", []) if isinstance(c, GradcompLightningCallback)
        ]
        if len(found) != 1:
            raise ValueError(
                f"training_loss needs exactly one GradcompLightningCallback in the Trainer's "
                f"callbacks (found {len(found)})"
            )
        weights = found[0].weights
        if set(losses) != set(weights):
            raise ValueError(f"losses for tasks {sorted(losses)}, expected {sorted(weights)}")
        if torch.is_grad_enabled():
            self._gradcomp_losses = dict(losses)
        from gradcomp.recorder._inputs import weighted_total

        return weighted_total([losses[t] for t in weights], list(weights.values()))
