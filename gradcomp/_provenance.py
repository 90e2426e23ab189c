"""Provenance attributes for every Dataset gradcomp writes."""

from __future__ import annotations

import functools
import json
import platform
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from gradcomp import __version__


@functools.lru_cache(maxsize=1)
def _git_state() -> str:
    """``git describe`` of the package's checkout, looked up once per process."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def provenance(config: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Attributes that say how a Dataset was made.

    netCDF attributes must be strings or numbers, so the config is stored as JSON.

    Args:
        config: the settings of the run (any JSON-serialisable mapping; other values are
            stored through ``str``).

    Returns:
        A dict for ``Dataset.attrs``; every value is a plain ``str`` (h5netcdf writes no
        ``str`` subclass such as ``torch.__version__``).
    """
    return {
        "gradcomp_version": __version__,
        "torch_version": str(torch.__version__),
        "python_version": platform.python_version(),
        "git_state": _git_state(),
        "config": json.dumps(dict(config or {}), sort_keys=True, default=str),
    }
