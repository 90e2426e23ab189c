"""The ``ds.gradcomp`` accessor: gradcomp's analyzers as methods of any Dataset.

Importing this module registers the accessor (``gradcomp/__init__`` does so). Analyzers are
imported when first called, so registering costs only xarray::

    import gradcomp.accessor  # noqa: F401
    ds.gradcomp.conflict(window=10)
    ds.gradcomp.sensing(variable="loss")
"""

from __future__ import annotations

import importlib
from typing import Any

import xarray as xr

from gradcomp.dims import LOSS

__all__ = ["GradcompAccessor"]


def _analyzer(name: str) -> Any:
    return getattr(importlib.import_module("gradcomp.analyze"), name)


@xr.register_dataset_accessor("gradcomp")
class GradcompAccessor:
    """gradcomp analyses of a recording or ensemble Dataset (each returns a new Dataset)."""

    def __init__(self, ds: xr.Dataset) -> None:
        self._ds = ds

    def conflict(self, threshold: float = 0.0, window: int = 10, **kwargs: Any) -> xr.Dataset:
        """Gradient conflict per layer and task pair; see :func:`gradcomp.analyze.conflict`."""
        return _analyzer("conflict")(self._ds, threshold=threshold, window=window, **kwargs)

    def oscillation(self, window: int = 20, **kwargs: Any) -> xr.Dataset:
        """Loss oscillation per task; see :func:`gradcomp.analyze.oscillation`."""
        return _analyzer("oscillation")(self._ds, window=window, **kwargs)

    def sensing(self, variable: str = LOSS, window: int = 10, **kwargs: Any) -> xr.Dataset:
        """Implicit sensing of the remote setting; see :func:`gradcomp.analyze.sensing`."""
        return _analyzer("sensing")(self._ds, variable=variable, window=window, **kwargs)

    def correlate(self, x: str, y: str, dims: str | list[str], **kwargs: Any) -> xr.Dataset:
        """Correlate two variables of the Dataset; see :func:`gradcomp.analyze.correlate`.

        ``control`` may be given as the name of a variable or coordinate (e.g. ``"width"``).
        """
        control = kwargs.pop("control", None)
        if isinstance(control, str):
            control = self._ds[control]
        return _analyzer("correlate")(
            self._ds[x], self._ds[y], dims, control=control, source=self._ds, **kwargs
        )

    def lagged(self, x: str, y: str, **kwargs: Any) -> xr.Dataset:
        """Lagged cross-correlation of two variables; see :func:`gradcomp.analyze.lagged`."""
        return _analyzer("lagged")(self._ds[x], self._ds[y], source=self._ds, **kwargs)
