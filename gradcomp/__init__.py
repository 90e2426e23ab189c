"""gradcomp: how the tasks of a multi-task network compete for shared weights.

Top-level names are imported lazily, so ``import gradcomp`` stays cheap and a user of the
recorder never pays for Dask or transformers.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import Any

try:  # the version of the installed distribution, not a second copy of it
    __version__ = importlib.metadata.version("gradcomp")
except importlib.metadata.PackageNotFoundError:  # running from a tree that was never installed
    __version__ = "0+unknown"

# name -> (module, attribute or None for the module itself)
_LAZY: dict[str, tuple[str, str | None]] = {
    "record": ("gradcomp.recorder", "record"),
    "linear": ("gradcomp.schedule", "linear"),
    "logarithmic": ("gradcomp.schedule", "logarithmic"),
    "chsh": ("gradcomp.chsh", None),
    "ensemble": ("gradcomp.ensemble", None),
    "ncnet": ("gradcomp.ncnet", None),
    "analyze": ("gradcomp.analyze", None),
    "plot": ("gradcomp.plot", None),
    "graph": ("gradcomp.graph", None),
    "lora": ("gradcomp.lora", None),
    "sweep": ("gradcomp.scaleout", "sweep"),
}

__all__ = ["__version__", *_LAZY]

# Registers the ``ds.gradcomp`` accessor; it imports only xarray, analyzers load on first use.
import gradcomp.accessor  # noqa: E402, F401


def __getattr__(name: str) -> Any:
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'gradcomp' has no attribute {name!r}") from None
    value = importlib.import_module(module)
    if attr is not None:
        value = getattr(value, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
