"""What every sub-command shares: one-line errors, argument types, output paths checked before any
work starts, and writes that never lose results.

An output file is checked before training (:func:`check_output`): not a directory, a known suffix,
not already there unless ``--force``, and its directory (or the nearest existing parent of it)
writable, probed by creating a file there. After training it is written to a temp name in the same
directory and renamed (:func:`save`), so a failed write never leaves half a file under the real
name; if that write fails anyway the results go to a fallback file (the temp dir, else the working
directory) whose path the error names.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = [
    "NETCDF_SUFFIXES",
    "CommandError",
    "check_device",
    "check_output",
    "figure_formats",
    "finite_float",
    "nonnegative_int",
    "one_line",
    "positive_float",
    "positive_int",
    "save",
]

NETCDF_SUFFIXES = (".nc", ".nc4", ".h5")


class CommandError(SystemExit):
    """A sub-command's error for the user: one line, no traceback, exit status ``status``.

    A ``SystemExit``, so a script that calls a command's ``run`` directly also ends with the
    message alone; :func:`gradcomp.cli.main` prints it as ``gradcomp COMMAND: error: ...``.
    """

    def __init__(self, message: str, status: int = 1):
        self.message = one_line(message)
        self.status = status
        super().__init__(self.message)


def one_line(text: object) -> str:
    """``text`` with every run of whitespace (newlines included) as one space."""
    return " ".join(str(text).split())


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def finite_float(text: str) -> float:
    """argparse type: a finite float (``nan`` and ``inf`` are refused)."""
    return _number(text)


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0."""
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def fraction(text: str) -> float:
    """argparse type: a share in [0, 1]."""
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def check_device(device: str, *, flag: str = "--device") -> str:
    """``device`` if this process can use it, else a :class:`CommandError` naming ``flag``."""
    from gradcomp.device import check_device as check

    try:
        check(device)
    except ValueError as err:
        raise CommandError(f"{flag}: {err}", status=2) from None
    return device


def figure_formats() -> tuple[str, ...]:
    """File suffixes matplotlib can save (``.png``, ``.pdf``, ``.svg``, ...)."""
    from matplotlib.backend_bases import FigureCanvasBase

    return tuple(f".{ext}" for ext in sorted(FigureCanvasBase.get_supported_filetypes()))


def _existing_parent(path: Path) -> Path:
    for parent in path.parents:
        if parent.exists():
            return parent
    return Path(path.anchor or ".")


def _probe_dir(directory: Path) -> str | None:
    """None if a file can be created in ``directory`` (existing), else why not."""
    if not directory.is_dir():
        return f"{directory} is not a directory"
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".gradcomp-probe-"):
            pass
    except OSError as err:
        return f"cannot create files in {directory} ({err.strerror or err})"
    return None


def check_output(
    path: Path,
    *,
    flag: str,
    suffixes: Iterable[str],
    force: bool = False,
) -> Path:
    """Check before any work that ``path`` can be written, without touching it.

    Missing parent directories are fine when the nearest existing one is writable (:func:`save`
    creates them).

    Raises:
        CommandError: ``path`` holds a NUL byte, is a directory, has a suffix not in
            ``suffixes``, exists without ``force``, or lies under a file or an unwritable
            directory.
    """
    if "\x00" in str(path):  # os calls raise ValueError on it, possibly only after training
        raise CommandError(f"{flag} {str(path)!r}: a path cannot contain a NUL byte", status=2)
    path = Path(path)
    allowed = tuple(suffixes)
    if path.is_dir():
        raise CommandError(
            f"{flag} {path} is a directory; give a file name, e.g. {path / ('out' + allowed[0])}",
            status=2,
        )
    if path.suffix.lower() not in allowed:
        raise CommandError(
            f"{flag} {path}: unknown suffix {path.suffix or '(none)'!r}; use one of "
            f"{', '.join(allowed)}",
            status=2,
        )
    if path.exists() or path.is_symlink():
        if not force:
            raise CommandError(
                f"{flag} {path} exists; pass --force to overwrite it or choose another name",
                status=2,
            )
        if not path.is_file():
            raise CommandError(f"{flag} {path} exists and is not a regular file", status=2)
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise CommandError(f"{flag} {path}: {parent} is not a directory", status=2)
    why = _probe_dir(parent if parent.exists() else _existing_parent(parent))
    if why is not None:
        raise CommandError(f"{flag} {path}: {why}", status=2)
    return path


def _fallback_dirs() -> list[Path]:
    out = [Path(tempfile.gettempdir()), Path.cwd()]
    return list(dict.fromkeys(out))


def save(write: Callable[[Path], None], path: Path, *, what: str, name: str) -> Path:
    """Write ``path`` through ``write(tmp)`` and an atomic rename; on failure keep a fallback.

    Args:
        write: writes the results to the path it is given.
        path: where the results belong.
        what: what is written, for the message (e.g. ``"the dataset"``).
        name: stem of a fallback file (``gradcomp-<name>-<time>-<pid><suffix>``).

    Returns:
        ``path``.

    Raises:
        CommandError: writing ``path`` failed; the message names the error and the fallback file
            the results were written to (or says that no fallback could be written either).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
        return path
    except Exception as err:  # any failure: keep the results elsewhere
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        cause = one_line(f"{type(err).__name__}: {err}")[:200]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    tried = []
    for directory in _fallback_dirs():
        fallback = directory / f"gradcomp-{name}-{stamp}-{os.getpid()}{path.suffix}"
        try:
            write(fallback)
        except Exception as err:
            tried.append(f"{fallback} ({type(err).__name__})")
            try:
                fallback.unlink(missing_ok=True)
            except OSError:
                pass
            continue
        raise CommandError(f"could not write {what} to {path} ({cause}); saved it to {fallback}")
    raise CommandError(
        f"could not write {what} to {path} ({cause}), nor to a fallback file "
        f"({'; '.join(tried)}): it is lost"
    )
