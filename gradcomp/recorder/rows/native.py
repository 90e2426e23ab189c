"""``nn.Linear`` and ``nn.LayerNorm`` of the ``"rows"`` strategy as C++ autograd functions.

The Python autograd functions of :mod:`.modules` cost more interpreter time per module call than
a small layer's arithmetic: on the d = 64 encoder of ``benchmarks/record_overhead.py`` a recorded
step took 1.35-1.4× a plain one, of which about 0.25 was Python inside the backward (the per-task
blocks, their Grams and the recorder's bookkeeping), measured with ``benchmarks/rows_breakdown.py``.
``_native.cpp`` does the same arithmetic in one C++ backward per call and writes the Gram entries
straight into tensors the recorder handed over in the forward (see :class:`Holders`).

When it is used: from the second recorded step on (the first one checks ``rows=`` in Python and
tells the hooks the batch's layout), for a module whose forward the hooks fuse
(:mod:`.hooks`), called on float32 or float64 tensors outside autocast, whose parameters all
require grad, with tasks that own equal consecutive row ranges (:func:`.spec.even_rows`) and the
batch size of the step before. Anything else takes the Python functions, whose statistics are the
same up to float rounding (``tests/test_record_rows_native.py``). A module called more than once
in a step, or per-unit Grams, hand their summed blocks to the Python side instead of Grams.

Building: :func:`torch.utils.cpp_extension.load` (the C++ compiler, ``ninja``) compiles it on first
use, about a minute, into a temporary folder; the library is then kept in ``$GRADCOMP_CACHE``
(:func:`gradcomp._cbuild.cache_dir`) under a name that carries a hash of the sources, the torch
and Python versions, the compiler and the machine, and later processes load it from there. Without
a compiler, when the build fails, on Windows, or with ``GRADCOMP_ROWS_NATIVE=0`` in the
environment, the Python functions are used (:func:`status` says why); the build is tried once per
process.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

from gradcomp._atomic import replacing
from gradcomp._cbuild import cache_dir

__all__ = ["Holders", "ops", "status"]

SOURCES = [Path(__file__).with_name("_native.cpp"), Path(__file__).with_name("_gram.c")]
FLAGS = ["-O3", "-march=native", "-fopenmp"]
LINK = ["-fopenmp"]
_OPS: list[ModuleType | str] = []  # the module, or why there is none (tried once)


@dataclass
class Holders:
    """What one module's native calls of one step share with the recorder.

    Attributes:
        ops: the compiled module (:func:`ops`).
        slots: ``[2, T, T]`` (zeros): the backward writes the Grams of the weight's and the bias's
            per-task blocks here; resized to empty when the recorder does not split the module.
        acc_w: empty, or (resized by the recorder before the backward) ``[T, *weight]`` zeros the
            backward adds the weight's blocks to (LayerNorm: ``[T, weight.numel()]``).
        acc_b: the same for the bias.
        state: int64 on the CPU, ``[T, rows per task, on]``, shared by the step's calls; the
            backward splits only while ``on`` (the recorder's own backward), never under the
            vmapped fallback.
        calls: the module's calls in this step's forward.
        row: where ``slots`` sits in the step's bank of slots (-1: a tensor of its own).
        buf: a Linear's scratch for its blocks (empty: the call allocates them).
    """

    ops: ModuleType = field(repr=False)
    slots: Tensor
    acc_w: Tensor
    acc_b: Tensor
    state: Tensor
    calls: int = 0
    row: int = -1
    buf: Tensor = field(default_factory=lambda: torch.empty(0), repr=False)
    buf_for: tuple[int, torch.dtype] | None = None  # (T, dtype) that ``buf`` was chosen for


def ops() -> ModuleType | None:
    """The compiled module (built on first use), or ``None`` where it cannot be or
    ``GRADCOMP_ROWS_NATIVE=0``."""
    if os.environ.get("GRADCOMP_ROWS_NATIVE") == "0":
        return None
    if not _OPS:
        _OPS.append(_load())
    mod = _OPS[0]
    return mod if isinstance(mod, ModuleType) else None


def status() -> str:
    """``"loaded"``, ``"off"`` (``GRADCOMP_ROWS_NATIVE=0``), ``"not tried"`` or why it could not
    be built."""
    if os.environ.get("GRADCOMP_ROWS_NATIVE") == "0":
        return "off"
    if not _OPS:
        return "not tried"
    return "loaded" if isinstance(_OPS[0], ModuleType) else _OPS[0]


def _key() -> str:
    parts = [s.read_bytes() for s in SOURCES]
    facts = [
        torch.__version__, sys.version, os.environ.get("CXX", "c++"), *FLAGS, *LINK,
        platform.machine(), platform.node(),
    ]  # fmt: skip
    return hashlib.sha256(b"".join(parts) + " ".join(facts).encode()).hexdigest()[:16]


def _load() -> ModuleType | str:
    if platform.system() == "Windows":
        return "not built on Windows"
    name = f"gradcomp_rows_{_key()}"
    target = cache_dir() / f"{name}.so"
    try:
        if target.exists():
            return _import(name, target)
        return _build(name, target)
    except Exception as err:  # the compiler's, ninja's or the loader's error: the Python path
        return f"{type(err).__name__}: {err}"


def _build(name: str, target: Path) -> ModuleType:
    from torch.utils.cpp_extension import load

    print(
        "gradcomp: compiling the rows strategy's C++ functions (once per machine and torch "
        "version, about a minute; GRADCOMP_ROWS_NATIVE=0 skips it)",
        file=sys.stderr,
        flush=True,
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        mod = load(
            name, [str(SOURCES[0])], extra_cflags=FLAGS, extra_ldflags=LINK,
            build_directory=tmp, verbose=False,
        )  # fmt: skip
        with replacing(target) as out:
            shutil.copyfile(Path(tmp) / f"{name}.so", out)
    return mod


def _import(name: str, path: Path) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sys.modules[name] = mod
    return mod
