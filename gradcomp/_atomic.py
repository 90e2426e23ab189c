"""Atomic writes: build a file or folder under a temporary name next to its target, then rename.

A reader (or a process that survives a crash) sees either the old target or the complete new
one, never half a file: ``os.replace`` within one folder is atomic on POSIX and Windows. With
``durable=True`` the data are also on disk before the rename and the rename is on disk after it
(fsync of the file, then of the folder), as a crash-safe store needs.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_write", "fsync", "fsync_tree", "replacing", "temp_name"]

Writer = Callable[[Path], object]


def temp_name(target: Path) -> Path:
    """A hidden name next to ``target``, unique to this call: ``.NAME.tmp.PID.RANDOM``."""
    return target.with_name(f".{target.name}.tmp.{os.getpid()}.{uuid.uuid4().hex[:8]}")


def fsync(path: Path) -> None:
    """fsync a file or a folder (its entries)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root``, and ``root`` itself."""
    for folder, _, files in os.walk(root):
        for name in files:
            fsync(Path(folder) / name)
        fsync(Path(folder))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def replacing(target: str | os.PathLike[str], *, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``target`` to write a file or folder to; when the block
    ends without an error it is renamed over ``target``, otherwise removed.

    A folder replaces an existing ``target`` folder through ``.NAME.replaced`` (moved aside,
    the new one renamed in, the old one deleted), so ``target`` is missing only between two
    renames.

    Args:
        target: the file or folder to (re)place.
        durable: fsync what was written, and the folder after the rename.
    """
    target = Path(target)
    tmp = temp_name(target)
    try:
        yield tmp
        if durable and tmp.is_dir():
            fsync_tree(tmp)
        elif durable:
            fsync(tmp)
        if tmp.is_dir() and target.exists():
            old = target.with_name(f".{target.name}.replaced")
            _remove(old)
            os.replace(target, old)
            os.replace(tmp, target)
            _remove(old)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            _remove(tmp)
    if durable:
        fsync(target.parent)


def atomic_write(
    path: str | os.PathLike[str], payload: bytes | str | Writer, *, durable: bool = False
) -> Path:
    """Write ``payload`` to ``path`` atomically (:func:`replacing`).

    Args:
        path: the target; its folder must exist.
        payload: the bytes or text (UTF-8) of the file, or a function that writes the file or
            folder at the path it is given (e.g. ``lambda p: ds.to_netcdf(p)``).
        durable: fsync the data before the rename and the folder after it.

    Returns:
        The path written.
    """
    with replacing(path, durable=durable) as tmp:
        if callable(payload):
            payload(tmp)
        else:
            with open(tmp, "wb") as f:
                f.write(payload.encode() if isinstance(payload, str) else payload)
    return Path(path)
