"""Resampling of independent units through their sufficient statistics (time and memory O(n)).

A statistic that is a smooth function of sums over units (seeds, blocks of steps, rows) is
bootstrapped by drawing units with replacement: each resample's sums are ``counts @ stats``
with ``counts[b, u]`` how often unit u was drawn (Efron & Tibshirani 1993, ch. 6 and 8; for
blocks of a series, Carlstein 1986). Nothing is copied per resample, so the cost is
``n_boot x n_units`` however many observations each unit holds.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

__all__ = ["MAX_UNITS", "resampled_sums", "unit_sums"]

#: cap on the units of a bootstrap: more units are merged into contiguous groups (still
#: independent units, so still a valid bootstrap; 20,000 is plenty for a percentile).
MAX_UNITS = 20_000


def unit_sums(unit: np.ndarray, n_units: int, columns: np.ndarray) -> np.ndarray:
    """Per-unit sums of ``columns[..., n]`` over the observations of each ``unit[n]``."""
    flat = columns.reshape(-1, columns.shape[-1])
    out = np.stack([np.bincount(unit, weights=c, minlength=n_units) for c in flat], -1)
    return out.reshape(n_units, *columns.shape[:-1])


def _counts(rng: np.random.Generator, n_units: int, n_boot: int) -> Iterator[np.ndarray]:
    chunk = max(1, min(n_boot, 2_000_000 // max(n_units, 1)))
    done = 0
    while done < n_boot:
        c = min(chunk, n_boot - done)
        draws = rng.integers(0, n_units, size=(c, n_units))
        flat = (draws + n_units * np.arange(c)[:, None]).ravel()
        yield np.bincount(flat, minlength=c * n_units).reshape(c, n_units).astype(float)
        done += c


def resampled_sums(stats: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Sums of ``stats[unit, ...]`` over ``n_boot`` bootstrap resamples of the units."""
    n_units = stats.shape[0]
    flat = stats.reshape(n_units, -1)
    out = np.concatenate([c @ flat for c in _counts(rng, n_units, n_boot)])
    return out.reshape(n_boot, *stats.shape[1:])
