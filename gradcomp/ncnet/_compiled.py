"""Build and load the compiled CPU kernel ``_kernel.c`` (NCnet's ``backend="c"``).

The C source ships with the package and is compiled on first use with the system C compiler
(``$CC``, default ``cc``) into ``$GRADCOMP_CACHE`` (default ``~/.cache/gradcomp``), once per
source, flags and machine; it is loaded with :mod:`ctypes`. No compiler is a clear error: use
``backend="torch"``. :func:`try_load` is what ``backend="auto"`` uses: a build or load that fails
(a compiler without OpenMP, a platform the flags don't fit) returns the reason instead of raising,
and is not retried for the same compiler and cache in this process.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from gradcomp._atomic import replacing

__all__ = ["CKernelUnavailableWarning", "available", "load", "try_load"]

SOURCE = Path(__file__).with_name("_kernel.c")
#: compile flags: -ffast-math lets gcc call glibc's vectorised expf (libmvec) in the lane loops.
#: It is given to the compile step only: linking with it would add crtfastmath.o, whose
#: constructor turns on flush-to-zero for the whole process when the library is loaded. The
#: kernel sets flush-to-zero itself, in its own threads, and restores it on return.
FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC"]
LINK = ["-shared", "-fopenmp"]
_LOADED: dict[str, ctypes.CDLL] = {}
_FAILED: dict[tuple[str, ...], str] = {}


class CKernelUnavailableWarning(UserWarning):
    """``backend="auto"`` could not build or load the C kernel and uses ``backend="torch"``."""


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc"))


def available() -> bool:
    """Whether the kernel can be built here (its source ships and a C compiler is on the PATH)."""
    return SOURCE.exists() and _compiler() is not None and platform.system() != "Windows"


def _cache_dir() -> Path:
    return Path(os.environ.get("GRADCOMP_CACHE", Path.home() / ".cache" / "gradcomp"))


def _build(real: str) -> Path:
    cc = _compiler()
    if cc is None:
        raise RuntimeError(
            "backend='c' needs a C compiler (set $CC or install gcc); use backend='torch'"
        )
    flags = [*FLAGS, f"-DREAL={real}", *(["-DREAL_DOUBLE"] if real == "double" else [])]
    key = hashlib.sha256(
        SOURCE.read_bytes()
        + " ".join([cc, *flags, *LINK, platform.machine(), platform.node()]).encode()
    ).hexdigest()[:16]
    cache = _cache_dir()
    target = cache / f"ncnet_kernel_{real}_{key}.so"
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        # atomic: concurrent builders never see half a file
        with tempfile.TemporaryDirectory(dir=cache) as tmp, replacing(target) as out:
            obj = Path(tmp) / "kernel.o"
            for cmd in (
                [cc, *flags, "-c", "-o", str(obj), str(SOURCE)],
                [cc, *LINK, "-o", str(out), str(obj), "-lm"],
            ):
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if proc.returncode != 0:
                    raise RuntimeError(
                        f"building {SOURCE.name} failed ({' '.join(cmd)}); use backend='torch'."
                        f"\n{proc.stderr}"
                    )
    return target


def load(dtype: torch.dtype):
    """The ``ncnet_train`` function for ``float32`` or ``float64`` (built on first use)."""
    real = {torch.float32: "float", torch.float64: "double"}.get(dtype)
    if real is None:
        raise ValueError(f"backend='c' supports float32 and float64, not {dtype}")
    if real not in _LOADED:
        _LOADED[real] = ctypes.CDLL(str(_build(real)))
    lib = _LOADED[real]
    scalar = ctypes.c_float if real == "float" else ctypes.c_double
    fn = lib.ncnet_train
    p, i, lng = ctypes.c_void_p, ctypes.c_int, ctypes.c_long
    fn.argtypes = [p, p, p, p, p, p, i, p, p, p, i, i, lng, i, scalar, i]
    fn.restype = ctypes.c_int
    lib.ncnet_set_threads(ctypes.c_int(max(1, torch.get_num_threads())))
    return fn, lib.ncnet_lanes()


def try_load(dtype: torch.dtype) -> str | None:
    """Build and load the kernel for ``dtype`` now; ``None`` on success, else why it failed.

    A failure is remembered for this dtype, compiler and cache directory (no rebuild on every
    ``run``).
    """
    key = (str(dtype), str(_compiler()), str(_cache_dir()))
    if key in _FAILED:
        return _FAILED[key]
    try:
        load(dtype)
    except (RuntimeError, OSError, AttributeError) as err:  # build, dlopen, missing symbol
        _FAILED[key] = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
        return _FAILED[key]
    return None
