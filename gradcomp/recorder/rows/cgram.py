"""The Gram of a large ``[T, P]`` float32 block on the CPU with a small compiled kernel.

For T ≤ 16 tasks and P ~ 10⁵ parameters, ``F @ F.T`` runs well below the machine's peak (its
output is tiny), and at d = 256, T = 8 it was the second-largest cost of a recorded step.
``_gram.c`` keeps 4 × 2 output tiles in vector registers and accumulates each 2,048-column chunk's
sums in float64: 2-3× faster than the BLAS product on this project's CPU and more accurate
(``benchmarks/record_overhead.py``; equal to a float64 reference within float32 rounding,
``tests/test_record_rows_cgram.py``). Its result does not depend on the thread count.

It is built on first use with the system C compiler (:mod:`gradcomp._cbuild`). Without a compiler,
on another device or dtype, for a small block, or with ``GRADCOMP_GRAM=torch`` in the environment,
:func:`block_gram` is :func:`gradcomp.gram.gram`; a build that fails is not retried in this
process.
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

__all__ = ["MIN_P", "MIN_T", "block_gram", "kernel"]

SOURCE = Path(__file__).with_name("_gram.c")
FLAGS = ["-O3", "-march=native", "-fopenmp", "-fPIC"]
LINK = ["-shared", "-fopenmp"]
#: Blocks with fewer tasks or columns take ``gram`` (the call overhead outweighs the gain).
MIN_T, MIN_P = 4, 8192
_LIB: dict[tuple[str | None, str | None], ctypes.CDLL | str] = {}  # ($CC, cache) -> library or why


def kernel() -> ctypes.CDLL | None:
    """The loaded kernel, built on first use; ``None`` where it cannot be (see the module
    docstring), or when ``GRADCOMP_GRAM=torch``."""
    env = os.environ
    if env.get("GRADCOMP_GRAM", "").lower() == "torch":
        return None
    key = (env.get("CC"), env.get("GRADCOMP_CACHE"))  # what compiler() and cache_dir() read
    lib = _LIB.get(key)
    if lib is None and platform.system() == "Windows":
        lib = _LIB[key] = "not built on Windows"
    if lib is None:
        try:
            lib = ctypes.CDLL(str(build(SOURCE, "rows_gram", FLAGS, LINK, "rows uses torch")))
            lib.gram_f32.restype = ctypes.c_int
            lib.gram_f32.argtypes = [
                ctypes.c_void_p, ctypes.c_long, ctypes.c_long, ctypes.c_long, ctypes.c_void_p,
                ctypes.c_int,
            ]  # fmt: skip
        except (RuntimeError, OSError, AttributeError) as err:  # build, dlopen, missing symbol
            lib = str(err) or repr(err)
        _LIB[key] = lib
    return lib if isinstance(lib, ctypes.CDLL) else None


def block_gram(flat: Tensor) -> Tensor:
    """``flat @ flat.T`` of ``[T, P]`` blocks in :func:`gradcomp.gram.acc_dtype`: the compiled
    kernel for CPU float32 blocks of at least :data:`MIN_T` rows and :data:`MIN_P` columns in
    unit stride, else
    :func:`gradcomp.gram.gram`."""
    if (
        flat.dtype != torch.float32
        or flat.device.type != "cpu"
        or flat.ndim != 2
        or flat.shape[0] < MIN_T
        or flat.shape[1] < MIN_P
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
    out = torch.empty(t, t, dtype=torch.float64)
    code = lib.gram_f32(flat.data_ptr(), t, p, ld, out.data_ptr(), max(1, torch.get_num_threads()))
    if code != 0:  # out of memory for the per-part sums
        return gram(flat)
    return out.to(torch.float32)
