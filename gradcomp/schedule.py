"""Schedules: plain ``step -> bool`` callables that say when to record.

Any callable ``step -> bool`` works wherever gradcomp takes a schedule; an ``int`` k means
"every k steps" (:func:`linear`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["Schedule", "as_schedule", "linear", "log_steps", "logarithmic"]

Schedule = Callable[[int], bool]


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


def as_schedule(every: int | Schedule) -> Schedule:
    """Turn an ``int`` or a callable into a schedule, with a clear error for anything else."""
    if isinstance(every, bool):
        raise TypeError("every must be an int or a step -> bool callable, not a bool")
    if isinstance(every, int):
        return linear(every)
    if callable(every):
        return every
    raise TypeError(f"every must be an int or a step -> bool callable, got {type(every).__name__}")
