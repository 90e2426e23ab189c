"""Provenance attributes for every Dataset gradcomp writes.

The CF global attributes (``Conventions``, ``history``; CF 1.10 §2.6.2) and the versions of
gradcomp and of the libraries its numbers depend on. gradcomp's version comes from its package
metadata; a ``git describe`` state is recorded only when gradcomp runs from its own checkout (the
package's parent directory holds gradcomp's ``pyproject.toml`` and is the git toplevel), never the
state of a user's repository that gradcomp happens to be installed or vendored in.
"""

from __future__ import annotations

import contextvars
import functools
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CONVENTIONS",
    "LIBRARIES",
    "SOURCE_PREFIX",
    "command",
    "derive",
    "describe",
    "package_version",
    "provenance",
]

#: the CF version the Datasets follow
CONVENTIONS = "CF-1.10"

#: distributions whose versions every Dataset records (``<name>_version``)
LIBRARIES = ("gradcomp", "torch", "numpy", "xarray", "scipy")

#: prefix of an input's attribute that a derived Dataset sets to a value of its own
SOURCE_PREFIX = "source_"

#: attrs that describe one computation only (a training method, an analysis' detrending, why
#: some statistic is undefined): never carried to a derived Dataset under their own name
OWN = ("analysis", "method", "detrend", "undefined_reason")

#: the command line being run, set by :func:`gradcomp.cli.main` for the ``history`` attribute
command: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "gradcomp_command", default=None
)

_NAME = re.compile(r'^\s*name\s*=\s*["\']gradcomp["\']\s*$', re.MULTILINE)


@functools.cache
def package_version(name: str) -> str:
    """The installed version of distribution ``name`` (``"unknown"`` if not installed)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _git(cwd: Path, *args: str) -> str:
    """Stripped stdout of ``git args`` in ``cwd``; ``""`` if git is missing or fails."""
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


@functools.cache
def _git_state(package_dir: str) -> str:
    """``git describe --always --dirty`` of gradcomp's own checkout, else ``""``.

    A checkout is the parent of ``package_dir`` when it holds a ``pyproject.toml`` naming the
    project ``gradcomp`` *and* is the toplevel of a git work tree. An installed copy (site-packages
    inside a user's repository), a vendored copy or a gradcomp source tree nested in another
    repository gets ``""``: the commit there is not gradcomp's.
    """
    root = Path(package_dir).resolve().parent
    try:
        pyproject = (root / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return ""
    if not _NAME.search(pyproject.split("[project]", 1)[-1].split("\n[", 1)[0]):
        return ""
    toplevel = _git(root, "rev-parse", "--show-toplevel")
    if not toplevel or Path(toplevel).resolve() != root:
        return ""
    return _git(root, "describe", "--always", "--dirty")


def _caller(depth: int) -> str:
    frame = sys._getframe(depth + 1)
    return f"{frame.f_globals.get('__name__', '?')}.{frame.f_code.co_name}"


def provenance(
    config: Mapping[str, Any] | None = None, *, source: str | None = None
) -> dict[str, str]:
    """Attributes that say how a Dataset was made.

    netCDF attributes must be strings or numbers, so the config is stored as JSON.

    Args:
        config: the settings of the run (any JSON-serialisable mapping; other values are
            stored through ``str``).
        source: what made the Dataset, for ``history``; default: the calling function
            (``module.function``).

    Returns:
        A dict for ``Dataset.attrs``; every value is a plain ``str`` (h5netcdf writes no
        ``str`` subclass such as ``torch.__version__``): ``Conventions``, ``history``
        (``"<UTC time>: gradcomp <version> <source>"``, the time taken from the environment
        variable ``SOURCE_DATE_EPOCH`` when it is set, and the command line when run by the
        ``gradcomp`` command), ``<library>_version`` for each of :data:`LIBRARIES`,
        ``python_version``, ``git_state`` (``""`` unless run from gradcomp's own checkout) and
        ``config``.
    """
    # SOURCE_DATE_EPOCH (reproducible-builds.org) fixes the stamp: byte-identical reruns, and
    # Datasets built in different seconds compare identical (the test suite sets it)
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    when = time.gmtime(int(epoch)) if epoch.isdigit() else time.gmtime()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", when)
    history = f"{stamp}: gradcomp {package_version('gradcomp')} {source or _caller(1)}"
    cmd = command.get()
    if cmd:
        history += f" (command: {cmd})"
    return {
        "Conventions": CONVENTIONS,
        "history": history,
        **{f"{lib}_version": package_version(lib) for lib in LIBRARIES},
        "python_version": platform.python_version(),
        "git_state": _git_state(str(Path(__file__).resolve().parent)),
        "config": json.dumps(dict(config or {}), sort_keys=True, default=str),
    }


def describe(name: str, params: Mapping[str, Any]) -> str:
    """The ``analysis`` attr of a derived Dataset: its maker and parameters, as a call.

    Example: ``describe("conflict", {"window": 10})`` is ``"conflict(window=10)"``.
    """
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in params.items())})"


def derive(source: Mapping[Any, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The attrs of a Dataset derived from one with attrs ``source`` (e.g. an analysis of a
    recording), whose own attrs are ``attrs`` (from :func:`provenance` and the analysis).

    Nothing of the input's provenance is lost, and what describes the derivation is its own:

    * ``history``: the input's lines, then the derivation's (CF 1.10 §2.6.2: an audit trail,
      one line per step, oldest first);
    * every other attr of ``source`` that ``attrs`` lacks (``strategy``, ``shared_parameters``,
      ``layer_members``, ``experiment``, ``alice_tasks``, ...) is kept under its name, except
      the per-computation attrs of :data:`OWN` (``method``, ...);
    * an attr of ``source`` that ``attrs`` sets to another value (``config``, the versions,
      ``git_state``), or one of :data:`OWN`, is kept as ``source_<name>``. An input that is
      itself derived already has ``source_<name>``: that one (the original data's) is kept.

    Args:
        source: the input's attrs (``{}`` when there is none, e.g. plain arrays).
        attrs: the derived Dataset's own attrs.

    Returns:
        A new dict for the derived Dataset's ``attrs``.
    """
    out: dict[str, Any] = {}
    for key, value in source.items():
        name = str(key)
        if name.startswith(SOURCE_PREFIX):
            out[name] = value  # the original data's, over an intermediate one's
        elif name == "history":
            continue
        elif name in OWN or (name in attrs and _differs(attrs[name], value)):
            if SOURCE_PREFIX + name not in source:
                out[SOURCE_PREFIX + name] = value
        elif name not in attrs:
            out[name] = value
    history = "\n".join(str(h) for h in (source.get("history"), attrs.get("history")) if h)
    out.update(attrs)
    if history:
        out["history"] = history
    return out


def _differs(a: Any, b: Any) -> bool:
    try:
        return bool(np.any(np.asarray(a) != np.asarray(b)))
    except (TypeError, ValueError):  # arrays of unequal shape
        return True
