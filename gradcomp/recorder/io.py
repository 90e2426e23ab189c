"""Write a recording to netCDF, atomically, so a crash never leaves a half-written file."""

from __future__ import annotations

import os
from pathlib import Path

import xarray as xr

__all__ = ["write_netcdf"]


def write_netcdf(ds: xr.Dataset, path: str | os.PathLike[str]) -> Path:
    """Write ``ds`` to ``path`` (engine ``h5netcdf``) through a temporary file and a rename.

    Args:
        ds: the Dataset.
        path: target file; its folder is created if needed.

    Returns:
        The path written.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".partial")
    ds.to_netcdf(tmp, engine="h5netcdf")
    os.replace(tmp, target)
    return target
