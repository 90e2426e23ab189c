"""Schedules: plain ``step -> bool`` callables that say when to record (or trace).

One vocabulary for the recorder's ``every`` and NCnet's ``trace_every`` (:func:`as_schedule`):

- an ``int`` k: every k steps from step 0 (:func:`linear`);
- a tuple or list of steps: exactly those (:func:`at`);
- a callable ``step -> bool``: itself (:func:`linear`, :func:`logarithmic` or your own);
- ``None``: about 30 log-spaced steps between 1 and the last step, plus step 0
  (:func:`logarithmic`; needs the last step).

:func:`scheduled` lists the steps of a run of known length a schedule selects, the last one
always included.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

__all__ = [
    "Every",
    "Schedule",
    "as_schedule",
    "at",
    "linear",
    "log_steps",
    "logarithmic",
    "scheduled",
]

Schedule = Callable[[int], bool]
#: everything :func:`as_schedule` accepts
Every = int | Sequence[int] | Schedule | None

#: log-spaced points of the default schedule (``None``)
DEFAULT_LOG_POINTS = 30


def linear(every: int, offset: int = 0) -> Schedule:
    """Record at ``offset, offset + every, offset + 2 * every, ...``."""
    if every < 1:
        raise ValueError(f"every must be a positive integer, got {every}")

    def schedule(step: int) -> bool:
        return step >= offset and (step - offset) % every == 0

    schedule.__name__ = f"linear(every={every}, offset={offset})"
    return schedule


def log_steps(start: int, end: int, num: int) -> list[int]:
    """The distinct integers nearest ``num`` log-spaced points from ``start`` to ``end``, sorted:
    ``round(start · (end / start)^(k / (num − 1)))`` for ``k = 0 .. num − 1``.

    Args:
        start: first step (> 0).
        end: last step (>= start).
        num: number of log-spaced points before rounding (duplicates collapse).
    """
    if not 0 < start <= end:
        raise ValueError(f"need 0 < start <= end, got start={start}, end={end}")
    return np.unique(np.round(np.geomspace(start, end, num)).astype(int)).tolist()


def logarithmic(start: int, end: int, num: int = 50, init: bool = True) -> Schedule:
    """Record at about ``num`` log-spaced steps between ``start`` and ``end`` (as Cockpit does).

    Args:
        start: first step (> 0; with ``init`` step 0 is recorded as well).
        end: last step.
        num: number of log-spaced points before rounding; duplicates after rounding collapse.
        init: also record step 0.
    """
    steps = set(log_steps(start, end, num))
    if init:
        steps.add(0)

    def schedule(step: int) -> bool:
        return step in steps

    schedule.__name__ = f"logarithmic({start}, {end}, num={num})"
    return schedule


def at(steps: Iterable[int]) -> Schedule:
    """Record at exactly ``steps`` (non-negative integers)."""
    chosen = set()
    for s in steps:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0:
            raise ValueError(f"steps must be non-negative integers, got {s!r}")
        chosen.add(int(s))

    def schedule(step: int) -> bool:
        return step in chosen

    schedule.__name__ = f"at({sorted(chosen)})"
    return schedule


def as_schedule(every: Every, *, last: int | None = None, name: str = "every") -> Schedule:
    """Turn any accepted ``every`` (see the module docstring) into a schedule, with clear errors.

    Args:
        every: an int, a tuple/list of steps, a ``step -> bool`` callable or ``None``.
        last: the run's last step, when known: ``None`` then means the logarithmic default
            (:data:`DEFAULT_LOG_POINTS` points between 1 and ``last``, plus 0), and listed steps
            must lie in ``0..last``. Without it ``None`` is refused.
        name: the argument's name in error messages (``"every"``, ``"trace_every"``).
    """
    if isinstance(every, bool):
        raise TypeError(f"{name} must be an int or a step -> bool callable, not a bool")
    if every is None and last is not None:
        if last == 0:
            return at((0,))
        return logarithmic(1, last, num=DEFAULT_LOG_POINTS)
    if isinstance(every, (int, np.integer)):
        if every < 1:
            raise ValueError(f"{name} must be a positive integer, got {every}")
        return linear(int(every))
    if isinstance(every, (tuple, list)):
        if last is not None:
            bad = [s for s in every if not 0 <= s <= last]
            if bad:
                raise ValueError(f"{name}: steps {bad} are outside 0..{last}")
        return at(every)
    if callable(every):
        return every
    raise TypeError(
        f"{name} must be an int, a tuple of steps or a step -> bool callable, "
        f"got {type(every).__name__}"
    )


def scheduled(schedule: Schedule, last: int) -> list[int]:
    """The steps ``0..last`` that ``schedule`` selects, sorted, ``last`` always included."""
    return sorted({s for s in range(last + 1) if schedule(s)} | {last})
