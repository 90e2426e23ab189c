"""The state of one recorded ``"rows"`` step, and :class:`Split`, what a module type's block
function is handed.

With ``G`` the output gradient of the one backward of ``Σ_t w_t L_t`` and ``X`` the module input,
the block of task t is computed from its rows only: it is ``w_t ∂L_t/∂θ``; the recorder divides
the Gram entries by ``w_t w_s`` (:attr:`Step.outer`) instead of dividing T blocks (see
:mod:`gradcomp.recorder.rows`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from gradcomp.recorder.rows.pool import BlockPool
from gradcomp.recorder.rows.spec import n_selected
from gradcomp.recorder.shared import Layout

__all__ = ["Split", "Step"]


@dataclass
class Step:
    """The state of one recorded rows step."""

    rows: list[slice | Tensor]
    scale: list[float]
    layout: Layout
    units: bool
    calls: dict[str, int]
    covered: set[str]
    even: int  # rows per task when rows are equal consecutive slices in task order, else 0
    outer: Tensor | None = None  # scale[t] * scale[s] (float64), None when every scale is 1
    want: dict[int, frozenset[str]] = field(default_factory=dict)
    splits: dict[tuple[frozenset[str], torch.dtype, torch.device], Split] = field(
        default_factory=dict
    )  # one Split per wanted parameters, dtype and device
    covers: dict[int, bool] = field(default_factory=dict)  # n_rows -> the rows cover the batch
    on: dict[torch.device, list[slice | Tensor]] = field(default_factory=dict)  # rows by device
    later: list[tuple[int, Tensor]] = field(default_factory=list)  # small blocks, one Gram pass
    arrived: dict[str, int] = field(default_factory=dict)
    blocks: dict[str, dict[str, Any]] = field(default_factory=dict)
    done: dict[int, tuple[Tensor, Tensor | None]] = field(default_factory=dict)
    # the C++ calls' Grams: bank rows -> parameter indices, then (indices, grams [k, T, T])
    bulk_src: list[int] = field(default_factory=list)
    bulk_dst: list[int] = field(default_factory=list)
    bulk: tuple[list[int], Tensor] | None = None
    native_later: list[tuple[str, Any]] = field(default_factory=list)  # blocks or own slots


@dataclass(frozen=True)
class Split:
    """How to cut one module call's tensors into the tasks' rows.

    Attributes:
        rows: each task's batch rows (dimension 0), on the device of the output gradient.
        even: rows per task when task t owns rows ``[t·even, (t+1)·even)``, else 0.
        dtype: the dtype to accumulate blocks in (float64 stays float64, else float32).
        want: the module's supported parameters that exist and require grad.
        covers: cache of :meth:`full` (shared by the step's splits).
        pool: where :meth:`empty` takes block buffers from (:mod:`.pool`).
    """

    rows: list[slice | Tensor]
    even: int
    dtype: torch.dtype
    want: frozenset[str]
    covers: dict[int, bool] = field(default_factory=dict, compare=False)
    pool: BlockPool | None = field(default=None, compare=False)

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        """An uninitialised buffer for blocks (reused from step to step on the CPU)."""
        if self.pool is None:
            return torch.empty(shape, dtype=dtype, device=device)
        return self.pool.empty(shape, dtype, device)

    @property
    def n_tasks(self) -> int:
        """T."""
        return len(self.rows)

    def by_task(self, t: Tensor, width: int) -> Tensor:
        """``[T, -1, width]`` view of the tasks' rows of ``t`` (only when :attr:`even`): task t's
        rows ``[t·even, (t+1)·even)``, rows past the tasks' dropped, flattened to ``width``."""
        cut = len(self.rows) * self.even
        return (t if t.shape[0] == cut else t[:cut]).reshape(len(self.rows), -1, width)

    def full(self, n_rows: int) -> bool:
        """Whether the (disjoint) tasks' rows cover all ``n_rows`` batch rows, so that the sum of
        the blocks over tasks is the gradient of the whole batch."""
        full = self.covers.get(n_rows)
        if full is None:
            full = self.covers[n_rows] = sum(n_selected(r, n_rows) for r in self.rows) == n_rows
        return full


def wanted(module: nn.Module, params: tuple[str, ...], st: Step) -> frozenset[str]:
    """The module's ``params`` that exist and require grad (cached per step)."""
    want = st.want.get(id(module))
    if want is None:
        have = [getattr(module, n, None) for n in params]
        want = frozenset(
            n for n, p in zip(params, have, strict=True) if p is not None and p.requires_grad
        )
        st.want[id(module)] = want
    return want
