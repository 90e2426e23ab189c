"""The grid of a sweep: named axes × a seed range, cut into chunks with deterministic keys.

A chunk is one cell of the named axes (e.g. ``width=3, lr=0.5``) and one contiguous block of
seeds. Seed blocks are aligned to multiples of ``seeds_per_chunk`` counted from seed 0, so a chunk's
key and its seeds depend only on its grid coordinates: extending the seed range of a sweep keeps
every finished chunk valid, and no chunk's seeds depend on worker order.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gradcomp.dims import SEED

__all__ = ["Chunk", "Grid"]

_SAFE = re.compile(r"^[A-Za-z0-9_.+-]+$")
_SEED_DIGITS = 10


def _scalar(axis: str, value: Any) -> int | float | str:
    """Return ``value`` as a plain JSON scalar, or raise naming the axis."""
    if isinstance(value, bool):
        raise ValueError(f"grid axis {axis!r}: booleans are not grid values; use 0/1")
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()  # numpy scalar
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"grid axis {axis!r}: value {value!r} is not finite")
        return value
    if isinstance(value, str) and _SAFE.match(value):
        return value
    raise ValueError(
        f"grid axis {axis!r}: value {value!r} is not a number or a simple string "
        "(letters, digits, '_.+-')"
    )


def _fmt(value: int | float | str) -> str:
    return repr(value) if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Chunk:
    """One unit of work: a cell of the named axes and a contiguous block of seeds.

    Attributes:
        coords: ``(axis, value)`` pairs in the grid's axis order.
        seed_start: first seed (inclusive).
        seed_stop: last seed (exclusive).
    """

    coords: tuple[tuple[str, int | float | str], ...]
    seed_start: int
    seed_stop: int

    @property
    def key(self) -> str:
        """File-name-safe key, e.g. ``width=3,lr=0.5,seed=0000000000-0000000250``."""
        parts = [f"{name}={_fmt(v)}" for name, v in self.coords]
        d = _SEED_DIGITS
        parts.append(f"{SEED}={self.seed_start:0{d}d}-{self.seed_stop:0{d}d}")
        return ",".join(parts)

    @property
    def cell(self) -> dict[str, int | float | str]:
        """The named-axis coordinates as a dict."""
        return dict(self.coords)

    @property
    def seeds(self) -> range:
        """The seeds this chunk computes."""
        return range(self.seed_start, self.seed_stop)


@dataclass(frozen=True)
class Grid:
    """Named axes × a contiguous seed range, chunked over seeds.

    Args:
        axes: ordered ``axis -> values``; each axis a non-empty sequence of distinct numbers or
            simple strings. May be empty (a sweep over seeds only).
        seeds: the seed range, ``range(start, stop)`` with step 1 (or ``(start, stop)``).
        seeds_per_chunk: block size; blocks are aligned to multiples of it from seed 0.
    """

    axes: tuple[tuple[str, tuple[int | float | str, ...]], ...]
    seed_start: int
    seed_stop: int
    seeds_per_chunk: int

    @classmethod
    def build(
        cls,
        axes: Mapping[str, Iterable[Any]],
        seeds: range | Sequence[int],
        seeds_per_chunk: int,
        *,
        allowed: Iterable[str] | None = None,
    ) -> Grid:
        """Validate and build a grid.

        Args:
            axes: ``axis -> values``.
            seeds: ``range(start, stop)`` (step 1) or a ``(start, stop)`` pair.
            seeds_per_chunk: seeds per chunk (>= 1).
            allowed: the axis names the experiment understands; any other name is refused.

        Raises:
            ValueError: unknown or empty axis, duplicate values, empty seed range, bad chunk size.
        """
        if SEED in axes:
            raise ValueError(f"give seeds through `seeds=`, not as a grid axis {SEED!r}")
        if allowed is not None:
            allowed = sorted(allowed)
            unknown = [a for a in axes if a not in allowed]
            if unknown:
                raise ValueError(
                    f"unknown grid axis {', '.join(map(repr, unknown))}; "
                    f"this experiment accepts: {', '.join(allowed) or '(none)'}"
                )
        norm = []
        for name, values in axes.items():
            if not isinstance(name, str) or not _SAFE.match(name):
                raise ValueError(f"grid axis name {name!r} must be a simple identifier")
            if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
                raise ValueError(f"grid axis {name!r} needs a sequence of values, got {values!r}")
            vals = tuple(_scalar(name, v) for v in values)
            if not vals:
                raise ValueError(f"grid axis {name!r} is empty; give at least one value")
            if len(set(vals)) != len(vals):
                raise ValueError(f"grid axis {name!r} has duplicate values: {vals}")
            norm.append((name, vals))
        if isinstance(seeds, range):
            if seeds.step != 1:
                raise ValueError(f"seeds must be a range with step 1, got {seeds!r}")
            start, stop = seeds.start, seeds.stop
        else:
            start, stop = (int(s) for s in seeds)
        if start < 0 or stop <= start:
            raise ValueError(f"the seed range [{start}, {stop}) is empty or negative")
        if int(seeds_per_chunk) < 1:
            raise ValueError(f"seeds_per_chunk must be >= 1, got {seeds_per_chunk}")
        return cls(tuple(norm), int(start), int(stop), int(seeds_per_chunk))

    @property
    def names(self) -> tuple[str, ...]:
        """Axis names, in order."""
        return tuple(name for name, _ in self.axes)

    @property
    def shape(self) -> tuple[int, ...]:
        """Number of values per named axis."""
        return tuple(len(v) for _, v in self.axes)

    @property
    def n_seeds(self) -> int:
        """Seeds per cell."""
        return self.seed_stop - self.seed_start

    def seed_blocks(self) -> list[tuple[int, int]]:
        """The ``(start, stop)`` seed blocks, aligned to multiples of ``seeds_per_chunk``."""
        k = self.seeds_per_chunk
        blocks = []
        lo = self.seed_start
        while lo < self.seed_stop:
            hi = min((lo // k + 1) * k, self.seed_stop)
            blocks.append((lo, hi))
            lo = hi
        return blocks

    def cells(self) -> list[tuple[tuple[str, int | float | str], ...]]:
        """Every cell of the named axes, in C order (last axis fastest)."""
        out: list[tuple[tuple[str, int | float | str], ...]] = [()]
        for name, values in self.axes:
            out = [(*c, (name, v)) for c in out for v in values]
        return out

    def chunks(self) -> list[Chunk]:
        """Every chunk, cell by cell, seed blocks in order within a cell."""
        blocks = self.seed_blocks()
        return [Chunk(c, lo, hi) for c in self.cells() for lo, hi in blocks]

    def to_json(self) -> str:
        """Canonical JSON, stored with the sweep."""
        return json.dumps(
            {
                "axes": [[n, list(v)] for n, v in self.axes],
                "seeds": [self.seed_start, self.seed_stop],
                "seeds_per_chunk": self.seeds_per_chunk,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Grid:
        """Inverse of :meth:`to_json`."""
        d = json.loads(text)
        return cls(
            tuple((n, tuple(v)) for n, v in d["axes"]),
            int(d["seeds"][0]),
            int(d["seeds"][1]),
            int(d["seeds_per_chunk"]),
        )
