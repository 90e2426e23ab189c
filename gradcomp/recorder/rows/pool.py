"""Reused CPU buffers for the per-task blocks of one ``"rows"`` step.

A Linear's ``T`` blocks ``[T, out, in]`` are ``T`` times its weight: megabytes for a realistic
layer. On the CPU, glibc serves such requests with ``mmap`` (or trims the heap after freeing
them), so every fresh buffer is paid again in page faults and zeroing by the kernel: measured on
this project's machine, about half of ``rows``' cost over a plain step at d = 256, T = 8
(``benchmarks/record_overhead.py``). The blocks of a large parameter live only until its Gram
entries are taken (:meth:`RowsHooks._finish <gradcomp.recorder.rows.hooks.RowsHooks>`), so one
buffer per shape serves every module of that shape, step after step.

CUDA tensors are not pooled: torch's caching allocator already reuses device memory.
"""

from __future__ import annotations

import math
import weakref

import torch
from torch import Tensor

__all__ = ["MIN_BYTES", "BlockPool"]

#: Smaller buffers come from ``torch.empty`` (glibc serves them from the heap without page faults).
MIN_BYTES = 1 << 18


class BlockPool:
    """Free buffers by (shape, dtype), handed out by :meth:`empty`, taken back by :meth:`give`.

    Only buffers this pool handed out are taken back, so a tensor that is still used elsewhere
    is never reused. The pool holds at most the buffers given back (about one per block shape);
    :meth:`clear` drops them.
    """

    def __init__(self) -> None:
        self._free: dict[tuple[tuple[int, ...], torch.dtype], list[Tensor]] = {}
        self._lent: weakref.WeakValueDictionary[int, Tensor] = weakref.WeakValueDictionary()

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        """An uninitialised contiguous tensor: a free buffer of this shape and dtype on the CPU,
        else a new one."""
        if device.type != "cpu" or math.prod(shape) * dtype.itemsize < MIN_BYTES:
            return torch.empty(shape, dtype=dtype, device=device)
        free = self._free.get((shape, dtype))
        buf = free.pop() if free else torch.empty(shape, dtype=dtype)
        self._lent[id(buf)] = buf
        return buf

    def give(self, t: Tensor) -> None:
        """Take back the buffer under ``t`` (``t`` or the tensor it is a view of) if this pool
        lent it; the caller must hold no other use of it. Other tensors are ignored."""
        if not self._lent:
            return
        base = t if t._base is None else t._base
        if self._lent.get(id(base)) is not base:
            return
        del self._lent[id(base)]
        self._free.setdefault((tuple(base.shape), base.dtype), []).append(base)

    def clear(self) -> None:
        """Drop every free buffer."""
        self._free.clear()
