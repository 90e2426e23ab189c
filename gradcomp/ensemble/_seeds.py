"""Per-run random streams: seed k's numbers never depend on which other seeds run beside it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

__all__ = ["chunks", "generator"]


def generator(seed: int, *key: int) -> np.random.Generator:
    """A generator seeded from ``SeedSequence([seed, *key])`` (e.g. ``key = (width,)``).

    Seed k's draws depend only on ``(k, *key)``: results do not change when seeds are run in
    other chunks, in other orders or on other machines.
    """
    if int(seed) < 0:
        raise ValueError(f"seeds must be non-negative integers, got {seed}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), *map(int, key)]))


def chunks(seeds: Sequence[int], size: int | None) -> Iterator[list[int]]:
    """Split ``seeds`` into consecutive chunks of at most ``size`` (all at once for ``None``)."""
    seeds = [int(s) for s in seeds]
    if size is None:
        yield seeds
        return
    if size < 1:
        raise ValueError(f"chunk must be a positive integer or None, got {size}")
    for i in range(0, len(seeds), size):
        yield seeds[i : i + size]
