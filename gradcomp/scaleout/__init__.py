"""Sweeps on Dask with a crash-safe, resumable chunk store (imports Dask only when a sweep runs).

``gradcomp.sweep`` is :func:`sweep`. See ``docs/scaleout.md``.
"""

from __future__ import annotations

from gradcomp.scaleout.chunkio import open_store
from gradcomp.scaleout.experiments import Experiment, LoraSweepExperiment, NCnetExperiment, Toy
from gradcomp.scaleout.grid import Chunk, Grid
from gradcomp.scaleout.store import ChunkStore, ConfigMismatchError
from gradcomp.scaleout.sweep import connect, sweep

__all__ = [
    "Chunk",
    "ChunkStore",
    "ConfigMismatchError",
    "Experiment",
    "Grid",
    "LoraSweepExperiment",
    "NCnetExperiment",
    "Toy",
    "connect",
    "open_store",
    "sweep",
]
