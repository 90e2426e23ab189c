"""Shared by both trainer callbacks: replay the step's forward and record it, training untouched.

A trainer owns its backward, and ``Recorder.backward`` runs one itself (leaving the summed gradient
in ``.grad``). So at a scheduled step, after the trainer's backward and before its optimizer step,
the callback replays the step's forward on the same inputs with the random-number state the
trainer's forward saw (so dropout masks are the same), hands the per-task losses to
``Recorder.backward`` and then restores every parameter's ``.grad``, every buffer (e.g. BatchNorm
running statistics) and the random-number state.
What the optimizer sees is bit-for-bit what it would have seen without the callback. Cost: one
extra forward and the recorder's per-task backward passes at scheduled steps only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from gradcomp.schedule import Schedule, as_schedule

__all__ = ["Replay", "default_losses"]


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


def _rng_state(device: torch.device | None) -> tuple[Tensor, Tensor | None]:
    cuda = None
    if device is not None and device.type == "cuda":
        cuda = torch.cuda.get_rng_state(device)
    return torch.get_rng_state(), cuda


class Replay:
    """Recorder + schedule + the bookkeeping that keeps training untouched.

    Args:
        record_kwargs: keyword arguments of :func:`gradcomp.record` (``every`` included).
        tasks: task names (or name -> weight) as for :func:`gradcomp.record`.
        get_losses: ``output -> {task: loss}`` (default :func:`default_losses`).
    """

    def __init__(
        self,
        tasks: Any,
        record_kwargs: dict[str, Any],
        get_losses: Callable[[Any], Mapping[str, Tensor]] | None = None,
    ) -> None:
        self.tasks = tasks
        self.kwargs = dict(record_kwargs)
        self.schedule: Schedule = as_schedule(self.kwargs.get("every", 1))
        self.get_losses = get_losses or default_losses
        self.recorder: Any = None
        self._open = False
        self._rng: tuple[Tensor, Tensor | None] | None = None

    def start(self, model: nn.Module) -> None:
        from gradcomp.recorder import record

        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError(
                "the model has no trainable parameters, so no shared parameters to record"
            )
        self.stop()
        self.recorder = record(model, self.tasks, **self.kwargs).__enter__()
        self._open = True

    def stop(self) -> None:
        """Close the recorder (flushes to ``path`` when one was given)."""
        if self._open:
            self._open = False
            self.recorder.__exit__(None, None, None)

    def remember_rng(self, device: torch.device | None) -> None:
        """Call just before the trainer's forward: the replay will see the same random state."""
        self._rng = _rng_state(device)

    def due(self, step: int) -> bool:
        return self._open and bool(self.schedule(step))

    def replay(
        self,
        model: nn.Module,
        forward: Callable[[], Any],
        step: int,
        context: contextlib.AbstractContextManager[Any] | None = None,
    ) -> None:
        """Re-run ``forward()`` and record its per-task losses at ``step``; restore ``.grad``."""
        params = [p for p in model.parameters() if p.requires_grad]
        saved = [None if p.grad is None else p.grad.detach().clone() for p in params]
        # the replayed forward must not move buffers either (BatchNorm running statistics)
        buffers = [(b, b.detach().clone()) for b in model.buffers()]
        devices = [] if self._rng is None or self._rng[1] is None else [params[0].device]
        try:
            with torch.random.fork_rng(devices=devices), _grads_off_training(params):
                if self._rng is not None:
                    torch.set_rng_state(self._rng[0])
                    if self._rng[1] is not None:
                        torch.cuda.set_rng_state(self._rng[1], params[0].device)
                with context or contextlib.nullcontext():
                    output = forward()
                losses = self.get_losses(output)
                self.recorder.backward(dict(losses), step=step)
        finally:
            for p, g in zip(params, saved, strict=True):
                p.grad = g
            with torch.no_grad():
                for b, value in buffers:
                    b.copy_(value)

    def to_dataset(self) -> Any:
        if self.recorder is None:
            raise ValueError("nothing recorded: the callback has not seen a training run yet")
        return self.recorder.to_dataset()


@contextlib.contextmanager
def _grads_off_training(params: list[nn.Parameter]) -> Iterator[None]:
    """Start the replay from empty ``.grad`` (restored afterwards by the caller)."""
    for p in params:
        p.grad = None
    yield
