"""A PyTorch Lightning ``Callback`` that records per-task gradient statistics.

The LightningModule provides its per-task losses for a batch: by default through a method
``task_losses(batch) -> {task: loss}`` (its ``training_step`` typically returns their sum), or
pass ``get_losses(pl_module, batch)``. At every scheduled optimizer step, after Lightning's
backward and before the optimizer step, the callback replays the forward on the step's batch (same
random state, same precision context) and hands the per-task losses to :func:`gradcomp.record`'s
recorder, then restores ``.grad``: Lightning optimizes exactly what it would without the callback
(see :mod:`gradcomp.integrations._common`). ``step`` is ``trainer.global_step`` before the
update. With gradient accumulation the statistics are those of the step's last micro-batch.

Example::

    cb = GradcompLightningCallback(["a", "b"], every=10)
    pl.Trainer(max_steps=100, callbacks=[cb]).fit(module, loader)
    cb.to_dataset()
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the standalone package
    from pytorch_lightning.callbacks import Callback

from gradcomp.integrations._common import Replay

__all__ = ["GradcompLightningCallback"]


def _default(pl_module: Any, batch: Any) -> Mapping[str, torch.Tensor]:
    return pl_module.task_losses(batch)


class GradcompLightningCallback(Callback):
    """Record per-task gradient statistics during ``Trainer.fit``.

    Args:
        tasks: task names, or name -> loss weight (as :func:`gradcomp.record`).
        get_losses: ``(pl_module, batch) -> {task: loss}``; default ``pl_module.task_losses``.
        **record_kwargs: any option of :func:`gradcomp.record` (``shared``, ``layers``,
            ``every``, ``strategy``, ``units``, ``store``, ``path``, ``flush_every``,
            ``on_nonfinite``, ``reduce``).
    """

    def __init__(
        self,
        tasks: Sequence[str] | Mapping[str, float],
        *,
        get_losses: Callable[[Any, Any], Mapping[str, torch.Tensor]] | None = None,
        **record_kwargs: Any,
    ) -> None:
        super().__init__()
        self._get = get_losses or _default
        self._replay = Replay(tasks, record_kwargs, get_losses=lambda out: out)
        self._batch: Any = None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self._get is _default and not callable(getattr(pl_module, "task_losses", None)):
            raise ValueError(
                f"{type(pl_module).__name__} has no task_losses(batch) method returning "
                "{task: loss}; add one or pass get_losses=(pl_module, batch) -> dict"
            )
        self._replay.start(pl_module)

    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        self._batch = batch
        self._replay.remember_rng(pl_module.device)

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        step = int(trainer.global_step)
        if self._batch is None or not self._replay.due(step):
            return
        batch = self._batch
        self._replay.replay(
            pl_module,
            lambda: self._get(pl_module, batch),
            step,
            trainer.precision_plugin.forward_context(),
        )

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._batch = None
        self._replay.stop()

    def to_dataset(self) -> Any:
        """The recording as a Dataset (as ``gradcomp.record(...).to_dataset()``)."""
        return self._replay.to_dataset()
