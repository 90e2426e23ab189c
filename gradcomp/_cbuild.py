"""Compile a C source that ships with the package into a cached shared library, on first use.

Shared by the compiled kernels (NCnet's ``engine="c"``, the ``"rows"`` Gram kernel): the system
C compiler (``$CC``, default ``cc``) builds into ``$GRADCOMP_CACHE`` (default
``~/.cache/gradcomp``), once per source, flags, compiler and machine (the name carries a hash of
them); the library appears atomically, so concurrent builders never load half a file.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from gradcomp._atomic import replacing

__all__ = ["build", "cache_dir", "compiler"]


def compiler() -> str | None:
    """The C compiler's path (``$CC``, default ``cc``), or ``None`` when there is none."""
    return shutil.which(os.environ.get("CC", "cc"))


def cache_dir() -> Path:
    """Where built libraries are kept: ``$GRADCOMP_CACHE``, default ``~/.cache/gradcomp``."""
    return Path(os.environ.get("GRADCOMP_CACHE", Path.home() / ".cache" / "gradcomp"))


def build(source: Path, name: str, flags: Sequence[str], link: Sequence[str], hint: str) -> Path:
    """The shared library of ``source`` compiled with ``flags`` and linked with ``link``,
    built now unless the cache has it.

    Args:
        source: the C file.
        name: the library's name stem in the cache (``{name}_{hash}.so``).
        flags: compile flags.
        link: link flags.
        hint: what to do instead, appended to the errors (e.g. "use engine='torch'").

    Raises:
        RuntimeError: no C compiler, or the build failed (with the compiler's message).
    """
    cc = compiler()
    if cc is None:
        raise RuntimeError(f"building {source.name} needs a C compiler (set $CC); {hint}")
    key = hashlib.sha256(
        source.read_bytes()
        + " ".join([cc, *flags, *link, platform.machine(), platform.node()]).encode()
    ).hexdigest()[:16]
    cache = cache_dir()
    target = cache / f"{name}_{key}.so"
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp, replacing(target) as out:
            obj = Path(tmp) / "kernel.o"
            for cmd in (
                [cc, *flags, "-c", "-o", str(obj), str(source)],
                [cc, *link, "-o", str(out), str(obj), "-lm"],
            ):
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if proc.returncode != 0:
                    raise RuntimeError(
                        f"building {source.name} failed ({' '.join(cmd)}); {hint}.\n{proc.stderr}"
                    )
    return target
