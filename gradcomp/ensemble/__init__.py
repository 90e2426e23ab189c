"""Many seeded runs of a small model trained at once (``torch.func`` vmap over stacked params).

The generic part: a functional :class:`Problem` (per-task losses, metrics, shared layers),
:func:`train` (vmap over runs) and :func:`train_loop` (one run at a time), per-task Gram
statistics on the shared layers at traced steps, and per-run random streams
(:func:`generator`). Model-specific fast paths (NCnet's hand-derived gradients in
:mod:`gradcomp.ncnet`) and these trainers are tested against :mod:`gradcomp.reference`.
"""

from __future__ import annotations

from gradcomp.ensemble._loop import train_loop
from gradcomp.ensemble._problem import Problem, per_task_stats
from gradcomp.ensemble._seeds import chunks, generator
from gradcomp.ensemble._vmap import train

__all__ = ["Problem", "chunks", "generator", "per_task_stats", "train", "train_loop"]
