"""``rows=`` as the user gives it: per-task batch rows, validated and normalised."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

__all__ = ["RowSpec", "as_row_index", "check_disjoint", "check_rows", "even_rows", "n_selected"]

RowSpec = slice | Sequence[int] | Tensor


def as_row_index(spec: RowSpec, n_rows: int) -> slice | Tensor:
    """Batch rows of one task: a slice stays a slice (views, no copies); anything else becomes a
    1-D ``long`` index (from a list of ints, an index tensor or a boolean mask)."""
    if isinstance(spec, slice):
        return spec
    if isinstance(spec, Tensor):
        idx = spec.nonzero().flatten() if spec.dtype == torch.bool else spec.flatten().long()
    elif isinstance(spec, Sequence) and all(isinstance(i, int) for i in spec):
        idx = torch.as_tensor(list(spec), dtype=torch.long)
    else:
        raise ValueError(
            f"rows= entries must be slices, int lists, index or bool tensors, got {spec!r}"
        )
    if n_rows and idx.numel() and (int(idx.min()) < -n_rows or int(idx.max()) >= n_rows):
        raise ValueError(f"rows= index out of range for a batch of {n_rows} rows")
    return idx


def check_disjoint(rows: Sequence[slice | Tensor], n_rows: int) -> None:
    """Raise a ``ValueError`` if two tasks share a batch row."""
    if not n_rows:  # no module could be split by rows: everything takes the fallback
        return
    owner = torch.zeros(n_rows, dtype=torch.long)
    for r in rows:
        owner[r.cpu() if isinstance(r, Tensor) else r] += 1
    if int(owner.max()) > 1:
        raise ValueError("rows= must give each task disjoint batch rows; some rows repeat")


def check_rows(rows: Mapping[str, RowSpec], tasks: Sequence[str]) -> None:
    """Validate ``rows=``: exactly the recorded tasks."""
    missing = [t for t in tasks if t not in rows]
    extra = [t for t in rows if t not in tasks]
    if missing or extra:
        raise ValueError(f"rows= must name every task once: missing {missing}, unknown {extra}")


def even_rows(rows: Sequence[slice | Tensor]) -> int:
    """n when ``rows[t] == slice(t * n, (t + 1) * n)`` for every task t, else 0."""
    first = rows[0]
    if not isinstance(first, slice) or first.start not in (0, None) or first.stop is None:
        return 0
    n = first.stop
    for t, r in enumerate(rows):
        if not isinstance(r, slice) or r.step not in (None, 1):
            return 0
        if (r.start or 0) != t * n or r.stop != (t + 1) * n:
            return 0
    return int(n) if n > 0 else 0


def n_selected(row: slice | Tensor, n_rows: int) -> int:
    """How many of ``n_rows`` batch rows ``row`` selects."""
    if isinstance(row, slice):
        return len(range(*row.indices(n_rows)))
    return int(row.numel())
