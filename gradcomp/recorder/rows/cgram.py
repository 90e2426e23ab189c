"""The Gram of a large ``[T, P]`` float32 block on the CPU with a small compiled kernel.

For T ≤ 16 tasks and P ~ 10⁵ parameters, ``F @ F.T`` runs well below the machine's peak (its
output is tiny), and at d = 256, T = 8 it was the second-largest cost of a recorded step.
``_gram.c`` keeps 4 × 2 output tiles in vector registers and accumulates each 2,048-column chunk's
sums in float64: 2-3× faster than the BLAS product on this project's CPU and more accurate
(``benchmarks/record_overhead.py``; equal to a float64 reference within float32 rounding,
``tests/test_record_rows_cgram.py``). Its result does not depend on the thread count.

It is built on first use with the system C compiler (:mod:`gradcomp._cbuild`). Without a compiler,
on another device or dtype, for a small block, or with ``GRADCOMP_GRAM=torch`` in the environment,
:func:`block_gram` is :func:`gradcomp.gram.gram`; the build is tried once per process.
"""

from __future__ import annotations

import ctypes
import os
import platform
from pathlib import Path

import torch
from torch import Tensor

from gradcomp._cbuild import build
from gradcomp.gram import gram

__all__ = ["MIN_WORK", "block_gram", "kernel"]

SOURCE = Path(__file__).with_name("_gram.c")
FLAGS = ["-O3", "-march=native", "-fopenmp", "-fPIC"]
LINK = ["-shared", "-fopenmp"]
#: Blocks with ``T² · P`` below this take ``gram`` (the call overhead outweighs the gain).
MIN_WORK = 8 * 8 * 4096
_LIB: list[ctypes.CDLL | str] = []  # the library, or why there is none (tried once)


def kernel() -> ctypes.CDLL | None:
    """The loaded kernel, built on first use (with ``$CC`` and ``$GRADCOMP_CACHE`` as they are
    then); ``None`` where it cannot be (see the module docstring), or when
    ``GRADCOMP_GRAM=torch``."""
    if os.environ.get("GRADCOMP_GRAM", "").lower() == "torch":
        return None
    if not _LIB:
        _LIB.append(_load())
    lib = _LIB[0]
    return lib if isinstance(lib, ctypes.CDLL) else None


def _load() -> ctypes.CDLL | str:
    if platform.system() == "Windows":
        return "not built on Windows"
    try:
        lib = ctypes.CDLL(str(build(SOURCE, "rows_gram", FLAGS, LINK, "rows uses torch")))
        lib.gram_f32.restype = ctypes.c_int
        lib.gram_f32.argtypes = [
            ctypes.c_void_p, ctypes.c_long, ctypes.c_long, ctypes.c_long, ctypes.c_void_p,
            ctypes.c_int,
        ]  # fmt: skip
    except (RuntimeError, OSError, AttributeError) as err:  # build, dlopen, missing symbol
        return str(err) or repr(err)
    return lib


def block_gram(flat: Tensor) -> Tensor:
    """``flat @ flat.T`` of ``[T, P]`` blocks in :func:`gradcomp.gram.acc_dtype`: the compiled
    kernel for CPU float32 blocks with ``T² · P ≥`` :data:`MIN_WORK` and columns in unit stride,
    else :func:`gradcomp.gram.gram`."""
    if (
        flat.dtype != torch.float32
        or flat.device.type != "cpu"
        or flat.ndim != 2
        or flat.shape[0] * flat.shape[0] * flat.shape[1] < MIN_WORK
        or flat.stride(1) != 1
        or flat.requires_grad
    ):
        return gram(flat)
    lib = kernel()
    if lib is None:
        return gram(flat)
    t, p = flat.shape
    ld = flat.stride(0) if t > 1 else p
    if ld < p:  # overlapping rows (an expanded view)
        return gram(flat)
    out = torch.empty(t, t)
    if lib.gram_f32(flat.data_ptr(), t, p, ld, out.data_ptr(), max(1, torch.get_num_threads())):
        return gram(flat)  # out of memory for the per-part sums
    return out
