"""A Hugging Face ``transformers.TrainerCallback`` that records per-task gradient statistics.

The model's forward must return its per-task losses next to the training loss, e.g.
``{"loss": la + lb, "losses": {"a": la, "b": lb}, ...}`` (or pass ``get_losses``). At every
scheduled optimizer step the callback replays that step's forward (same inputs, same random state,
same autocast) and hands the per-task losses to :func:`gradcomp.record`'s recorder, then restores
``.grad``: the Trainer optimizes exactly what it would without the callback (see
:mod:`gradcomp.integrations._common`). With gradient accumulation, the statistics are those of the
last micro-batch of each optimizer step. ``step`` is ``state.global_step`` before the update
(0 for the first).

Example::

    cb = GradcompCallback(["a", "b"], every=gradcomp.logarithmic(1, 1000))
    Trainer(model, args, train_dataset=ds, callbacks=[cb]).train()
    cb.to_dataset()   # the same Dataset as gradcomp.record(...).to_dataset()
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from transformers import TrainerCallback

from gradcomp.integrations._common import Replay

__all__ = ["GradcompCallback"]


class GradcompCallback(TrainerCallback):
    """Record per-task gradient statistics during ``Trainer.train()``.

    Args:
        tasks: task names, or name -> loss weight (as :func:`gradcomp.record`).
        get_losses: ``model output -> {task: loss}``; default ``output["losses"]``.
        **record_kwargs: any option of :func:`gradcomp.record` (``shared``, ``layers``,
            ``every``, ``strategy``, ``units``, ``store``, ``path``, ``flush_every``,
            ``on_nonfinite``, ``reduce``).
    """

    def __init__(
        self,
        tasks: Sequence[str] | Mapping[str, float],
        *,
        get_losses: Callable[[Any], Mapping[str, torch.Tensor]] | None = None,
        **record_kwargs: Any,
    ) -> None:
        self._replay = Replay(tasks, record_kwargs, get_losses)
        self._inputs: dict[str, Any] | None = None
        self._handle: Any = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise ValueError("GradcompCallback needs the Trainer's model (Trainer passes it)")
        self._replay.start(model)
        self._handle = model.register_forward_pre_hook(self._capture, with_kwargs=True)
        self._model = model
        self._args = args

    def _capture(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if module.training and torch.is_grad_enabled():
            self._inputs = {"args": args, "kwargs": kwargs}
            device = next(module.parameters()).device
            self._replay.remember_rng(device)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        step = int(state.global_step)
        if self._inputs is None or not self._replay.due(step):
            return
        inputs = self._inputs
        target = model if model is not None else self._model
        self._replay.replay(
            target,
            lambda: target(*inputs["args"], **inputs["kwargs"]),
            step,
            _autocast(args, next(target.parameters()).device),
        )

    def on_train_end(self, args, state, control, **kwargs):
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._inputs = None
        self._replay.stop()

    def to_dataset(self) -> Any:
        """The recording as a Dataset (as ``gradcomp.record(...).to_dataset()``)."""
        return self._replay.to_dataset()


def _autocast(args: Any, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if getattr(args, "bf16", False):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if getattr(args, "fp16", False):
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()
