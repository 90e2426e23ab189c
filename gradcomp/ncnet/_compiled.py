"""Build and load the compiled CPU kernel ``_kernel.c`` (NCnet's ``engine="c"``).

The C source ships with the package and is compiled on first use with the system C compiler
(``$CC``, default ``cc``) into ``$GRADCOMP_CACHE`` (default ``~/.cache/gradcomp``), once per
source, flags and machine (:mod:`gradcomp._cbuild`); it is loaded with :mod:`ctypes`. No
compiler is a clear error: use ``engine="torch"``. :func:`try_load` is what ``engine="auto"``
uses: a build or load that fails (a compiler without OpenMP, a platform the flags don't fit)
returns the reason instead of raising, and is not retried for the same compiler and cache in this
process.

The kernel takes one argument, a pointer to ``struct ncnet_args``. :data:`ARGS_FIELDS` is its one
Python description (a :class:`ctypes.Structure` is built from it); on load the library's own
layout (``ncnet_args_names``, ``ncnet_args_layout``: field names, ``sizeof`` and ``offsetof``
generated from the struct's single declaration) must equal the Structure's, else
:class:`KernelLayoutError` is raised before any call. The struct's ``size`` field is checked once
more by the kernel (return code ``-2``), so a stale caller never makes it read past the struct.
"""

from __future__ import annotations

import ctypes
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gradcomp._cbuild import build, cache_dir, compiler

__all__ = [
    "ARGS_FIELDS",
    "CKernelUnavailableWarning",
    "Kernel",
    "KernelLayoutError",
    "available",
    "load",
    "try_load",
]

SOURCE = Path(__file__).with_name("_kernel.c")
#: compile flags: IEEE arithmetic, every +, −, ×, / rounded on its own as torch rounds it, so that
#: the kernel's results are bit-identical to engine="torch" (see _kernel.c): no -ffast-math (it
#: reassociates, uses reciprocal estimates and flushes subnormals), and -ffp-contract=off (gcc
#: fuses a * b + c into one fused multiply-add by default wherever -march=native has FMA).
#: -fno-trapping-math (no program here observes floating-point exceptions) and -fno-math-errno
#: change no value; they let gcc vectorise the lane loops' compares and selects (2.5× faster).
FLAGS = [
    *("-O3", "-march=native", "-ffp-contract=off", "-fno-fast-math"),
    *("-fno-trapping-math", "-fno-math-errno", "-fopenmp", "-fPIC"),
]
LINK = ["-shared", "-fopenmp"]
_LOADED: dict[str, Kernel] = {}
_FAILED: dict[tuple[str, ...], str] = {}

#: stands for the kernel's floating-point type (``float`` or ``double``) in :data:`ARGS_FIELDS`
REAL = "REAL"
_P = ctypes.c_void_p
#: ``struct ncnet_args`` of ``_kernel.c``, field by field, in declaration order
ARGS_FIELDS: tuple[tuple[str, Any], ...] = (
    ("size", ctypes.c_long),
    ("W", _P),
    ("b", _P),
    ("V", _P),
    ("c", _P),
    ("mask", _P),
    ("gstart", _P),
    ("X", _P),
    ("Y", _P),
    ("wp", _P),
    ("K", ctypes.c_long),
    ("G", ctypes.c_int),
    ("k", ctypes.c_int),
    ("P", ctypes.c_int),
    ("steps", ctypes.c_int),
    ("act", ctypes.c_int),
    ("lr", REAL),
)


class CKernelUnavailableWarning(UserWarning):
    """``engine="auto"`` could not build or load the C kernel and uses ``engine="torch"``."""


class KernelLayoutError(RuntimeError):
    """The compiled kernel's ``struct ncnet_args`` differs from :data:`ARGS_FIELDS`."""


def args_struct(real: str) -> type[ctypes.Structure]:
    """The :class:`ctypes.Structure` of :data:`ARGS_FIELDS` for ``real`` (``"float"``,
    ``"double"``)."""
    scalar = ctypes.c_float if real == "float" else ctypes.c_double
    fields = [(name, scalar if kind == REAL else kind) for name, kind in ARGS_FIELDS]
    return type(f"NCnetArgs_{real}", (ctypes.Structure,), {"_fields_": fields})


@dataclass(frozen=True)
class Kernel:
    """The loaded ``ncnet_train`` of one precision: call it with the struct's fields.

    Attributes:
        lanes: SIMD lanes (runs per block); the seed count ``K`` must be a multiple of it.
        args: the checked argument Structure.
    """

    lib: ctypes.CDLL
    args: type[ctypes.Structure]
    lanes: int

    def __call__(self, **fields: Any) -> int:
        """Run ``ncnet_train`` with the struct's fields (all but ``size``) as keywords.

        Raises:
            TypeError: a field is missing or unknown (nothing is called).
        """
        names = [name for name, _ in ARGS_FIELDS if name != "size"]
        if sorted(fields) != sorted(names):
            missing, extra = sorted(set(names) - set(fields)), sorted(set(fields) - set(names))
            raise TypeError(f"ncnet_train arguments: missing {missing}, unknown {extra}")
        args = self.args(size=ctypes.sizeof(self.args), **fields)
        return int(self.lib.ncnet_train(ctypes.byref(args)))


def check_layout(lib: ctypes.CDLL, args: type[ctypes.Structure]) -> None:
    """Compare the library's ``struct ncnet_args`` with ``args``: names, offsets, size.

    Raises:
        KernelLayoutError: they differ (the kernel is then never called).
    """
    lib.ncnet_args_names.restype = ctypes.c_char_p
    lib.ncnet_args_names.argtypes = []
    lib.ncnet_args_layout.restype = ctypes.c_int
    lib.ncnet_args_layout.argtypes = [ctypes.POINTER(ctypes.c_long), ctypes.c_int]
    c_names = lib.ncnet_args_names().decode().rstrip(",").split(",")
    names = [field[0] for field in args._fields_]
    want = [ctypes.sizeof(args), *(getattr(args, name).offset for name in names)]
    buf = (ctypes.c_long * len(want))()
    count = lib.ncnet_args_layout(buf, len(want))
    got = list(buf)
    if c_names != names or count != len(want) or got != want:
        raise KernelLayoutError(
            "the compiled NCnet kernel's struct ncnet_args does not match "
            "gradcomp.ncnet._compiled.ARGS_FIELDS: C fields "
            f"{c_names} (sizeof, offsets {got[:count]}), Python fields {names} "
            f"(sizeof, offsets {want}); rebuild it (clear $GRADCOMP_CACHE) or use engine='torch'"
        )


def available() -> bool:
    """Whether the kernel can be built here (its source ships and a C compiler is on the PATH)."""
    return SOURCE.exists() and compiler() is not None and platform.system() != "Windows"


def _build(real: str) -> Path:
    flags = [*FLAGS, f"-DREAL={real}", *(["-DREAL_DOUBLE"] if real == "double" else [])]
    return build(SOURCE, f"ncnet_kernel_{real}", flags, LINK, "use engine='torch'")


def load(dtype: torch.dtype) -> Kernel:
    """The checked ``ncnet_train`` for ``float32`` or ``float64`` (built on first use).

    Raises:
        ValueError: another dtype.
        RuntimeError: no compiler or a failed build; :class:`KernelLayoutError` when the
            library's argument struct differs from :data:`ARGS_FIELDS`.
    """
    real = {torch.float32: "float", torch.float64: "double"}.get(dtype)
    if real is None:
        raise ValueError(f"engine='c' supports float32 and float64, not {dtype}")
    if real not in _LOADED:
        lib = ctypes.CDLL(str(_build(real)))
        args = args_struct(real)
        check_layout(lib, args)
        lib.ncnet_train.argtypes = [ctypes.POINTER(args)]
        lib.ncnet_train.restype = ctypes.c_int
        lib.ncnet_lanes.restype = ctypes.c_int
        _LOADED[real] = Kernel(lib=lib, args=args, lanes=int(lib.ncnet_lanes()))
    kernel = _LOADED[real]
    kernel.lib.ncnet_set_threads(ctypes.c_int(max(1, torch.get_num_threads())))
    return kernel


def try_load(dtype: torch.dtype) -> str | None:
    """Build and load the kernel for ``dtype`` now; ``None`` on success, else why it failed.

    A failure is remembered for this dtype, compiler and cache directory (no rebuild on every
    ``run``).
    """
    key = (str(dtype), str(compiler()), str(cache_dir()))
    if key in _FAILED:
        return _FAILED[key]
    try:
        load(dtype)
    except (RuntimeError, OSError, AttributeError) as err:  # build, dlopen, missing symbol
        _FAILED[key] = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
        return _FAILED[key]
    return None
