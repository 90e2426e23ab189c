"""Save an NCnet Dataset compactly and open it again: :func:`save`, :func:`open_dataset`.

What is stored (``gradcomp ncnet`` and ``analyses/ncnet_capacity.py`` write this way):

- every variable of the Dataset except ``grad_norm`` and ``cosine``, which are exact functions
  of ``gram`` (:func:`gradcomp.ncnet._run.derived`) and are recomputed by :func:`open_dataset`,
  bit for bit the values the run had;
- the encoding of :func:`gradcomp._encoding.encoding_for`: outcomes ``a``, ``b`` as int8 with
  ``_FillValue`` 0 for NaN, booleans as int8, float32 statistics (``loss``, ``acc``, ``gram``)
  as float32, everything gzip-compressed after the byte shuffle. Nothing is rounded.

``open_dataset(path)`` therefore returns a Dataset identical to the one saved
(``xarray.testing.assert_identical``, tested). ``xarray.open_dataset`` also reads the file; it
lacks only ``grad_norm`` and ``cosine`` (``gradcomp.analyze.conflict`` computes the cosine from
``gram`` itself).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import xarray as xr

from gradcomp import _dims
from gradcomp._encoding import encoding_for
from gradcomp.ncnet._run import derived

__all__ = ["DERIVED", "open_dataset", "save"]

#: variables not stored, recomputed from ``gram`` on opening
DERIVED = ("grad_norm", "cosine")
_MARK = "derived_from_gram"


def save(ds: xr.Dataset, path: str | os.PathLike[str]) -> Path:
    """Write ``ds`` (from :func:`gradcomp.ncnet.run` or ``capacity``) to a netCDF file, compactly.

    Args:
        ds: the Dataset.
        path: the ``.nc`` file (written as is: callers that need an atomic write pass a
            temporary path and rename it).

    Returns:
        The path written.
    """
    drop = [v for v in DERIVED if v in ds.data_vars] if "gram" in ds.data_vars else []
    out = ds.drop_vars(drop)
    if drop:
        out.attrs[_MARK] = " ".join(drop)
    out.to_netcdf(path, engine="h5netcdf", encoding=encoding_for(out))
    return Path(path)


def open_dataset(path: str | os.PathLike[str]) -> xr.Dataset:
    """Read a file written by :func:`save` into memory, with ``grad_norm`` and ``cosine`` restored.

    Files written by ``xarray`` directly (older ``gradcomp ncnet`` outputs) are read as they are.
    """
    with xr.open_dataset(path, engine="h5netcdf") as f:
        ds = f.load()
    names = str(ds.attrs.pop(_MARK, "")).split()
    if names:
        gram = ds["gram"]
        norm, cosine = derived(np.asarray(gram.values))
        made = {
            "grad_norm": (gram.dims[:-1], norm),
            "cosine": (gram.dims, cosine),
        }
        for name in names:
            ds[name] = made[name]
        ds = _dims.annotate(ds)
    return ds
