"""The recorder's options as one validated, frozen object (:class:`RecordConfig`).

Built once from :func:`gradcomp.record`'s keyword arguments (or by a trainer integration) and
passed whole to the recorder, its strategy choice and the integrations; its
:meth:`RecordConfig.attrs` is the ``config`` attribute of the recorded Dataset.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from os import PathLike
from typing import Any

from torch import Tensor

from gradcomp.recorder._inputs import task_weights
from gradcomp.recorder.shared import SharedSpec
from gradcomp.recorder.strategy import strategy_names
from gradcomp.schedule import Every, Schedule, as_schedule

__all__ = ["DEFAULT_FLUSH_EVERY", "RecordConfig", "Reduce"]

Reduce = Callable[[Tensor], Tensor]

#: recorded steps between flushes when ``path=`` is given without ``flush_every``
DEFAULT_FLUSH_EVERY = 1000


@dataclasses.dataclass(frozen=True, eq=False)
class RecordConfig:
    """Every option of :func:`gradcomp.record` (see there), validated on construction.

    Derived on construction: ``weights`` (task -> loss weight, in task order), ``schedule`` (from
    ``every``, :func:`gradcomp.schedule.as_schedule`) and ``flush_every``
    (:data:`DEFAULT_FLUSH_EVERY` when ``path`` is given without it).
    :func:`dataclasses.replace` builds a changed copy, validated again.
    """

    tasks: Sequence[str] | Mapping[str, float]
    shared: SharedSpec = None
    layers: str | Mapping[str, Sequence[str]] = "module"
    every: Every = 1
    strategy: str = "auto"
    units: bool = False
    store: str = "stats"
    path: str | PathLike[str] | None = None
    flush_every: int | None = None
    on_nonfinite: str = "warn"
    reduce: Reduce | None = None
    weights: dict[str, float] = dataclasses.field(init=False, repr=False)
    schedule: Schedule = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        names = ("auto", *strategy_names())
        if self.strategy not in names:
            raise ValueError(f"strategy must be one of {names}, got {self.strategy!r}")
        if self.store not in ("stats", "full"):
            raise ValueError(f"store must be 'stats' or 'full', got {self.store!r}")
        if self.on_nonfinite not in ("warn", "raise"):
            raise ValueError(f"on_nonfinite must be 'warn' or 'raise', got {self.on_nonfinite!r}")
        flush_every = self.flush_every
        if flush_every is not None and (flush_every < 1 or self.path is None):
            raise ValueError("flush_every needs a positive int and a path= to flush to")
        if self.path is not None and flush_every is None:
            object.__setattr__(self, "flush_every", DEFAULT_FLUSH_EVERY)
        if self.reduce is not None and not callable(self.reduce):
            raise TypeError("reduce must be a callable Tensor -> Tensor")
        if not (self.layers in ("module", "param") or isinstance(self.layers, Mapping)):
            raise ValueError(f"layers must be 'module', 'param' or a mapping, got {self.layers!r}")
        object.__setattr__(self, "weights", task_weights(self.tasks))
        object.__setattr__(self, "schedule", as_schedule(self.every))

    @property
    def task_names(self) -> list[str]:
        """The task names, in order."""
        return list(self.weights)

    def attrs(self, strategies_used: Iterable[str] = ()) -> dict[str, Any]:
        """The JSON-friendly description stored as the Dataset's ``config`` attribute."""
        return {
            "tasks": self.weights,
            "strategy": self.strategy,
            "strategies_used": sorted(strategies_used),
            "schedule": getattr(self.schedule, "__name__", repr(self.schedule)),
            "layers": self.layers if isinstance(self.layers, str) else dict(self.layers),
            "units": int(self.units),
            "store": self.store,
            "on_nonfinite": self.on_nonfinite,
            "reduce": "" if self.reduce is None else getattr(self.reduce, "__name__", "callable"),
        }
