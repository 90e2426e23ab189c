"""Save an NCnet Dataset compactly and open it again: :func:`save`, :func:`open_dataset`.

What is stored (``gradcomp ncnet`` and ``analyses/ncnet_capacity.py`` write this way):

- every variable of the Dataset except ``grad_norm`` and ``cosine``, which are exact functions
  of ``gram`` (:func:`gradcomp.gram.grad_norm`, :func:`gradcomp.gram.cosine`) and are
  recomputed by :func:`open_dataset`;
- the symmetric T × T statistics (``gram``, ``unit_gram``) as their upper triangle
  (``gram_triu``, ``unit_gram_triu`` along ``task_pair``), rebuilt by :func:`open_dataset`;
- with ``keep_bits`` (default :data:`KEEP_BITS`) the float32 traces of :data:`ROUNDED` rounded
  to that many mantissa bits (:func:`gradcomp._encoding.bit_round`, relative error at most
  ``2**-(keep_bits + 1)``, 2.4e-4 at the default; recorded in the netCDF-C attribute
  ``_QuantizeBitRoundNumberOfSignificantBits``); ``keep_bits=None`` stores them bit for bit;
- the encoding of :func:`gradcomp._encoding.encoding_for`: outcomes ``a``, ``b`` as int8 with
  ``_FillValue`` 0 for NaN, booleans as int8, everything gzip-compressed after the byte shuffle.
  Outcomes, accuracies, flags and every estimate (S, Δ, margin, their bounds) are never rounded.

With ``keep_bits=None``, ``open_dataset(path)`` returns a Dataset identical to the one saved
(``xarray.testing.assert_identical``, tested); with rounding, identical but for the rounded
traces and what is computed from them (``cosine``, ``grad_norm``). ``xarray.open_dataset`` also
reads the file; it lacks ``gram``, ``grad_norm`` and ``cosine``, which need :func:`open_dataset`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import xarray as xr

from gradcomp import dims
from gradcomp._encoding import KEEP_BITS, QUANTIZE_ATTR, bit_round, encoding_for
from gradcomp.gram import cosine, grad_norm

__all__ = ["DERIVED", "KEEP_BITS", "ROUNDED", "open_dataset", "save"]

#: variables not stored, recomputed from ``gram`` on opening
DERIVED = ("grad_norm", "cosine")
#: the float32 per-run traces that ``keep_bits`` rounds (never outcomes, accuracies or estimates)
ROUNDED = ("loss", "gram", "unit_gram")
_MARK = "derived_from_gram"
_ONE_CHUNK = 64 * 2**20  # bytes: a variable up to this size is stored as one compressed chunk
_TRIU = "_triu"
PAIR = "task_pair"


def _triu(var: xr.DataArray) -> xr.DataArray | None:
    """The upper triangle of a symmetric ``(..., task, task_j)`` variable, or None."""
    if var.dims[-2:] != (dims.TASK, dims.TASK_J):
        return None
    x = np.asarray(var.values)
    if not np.array_equal(x, np.swapaxes(x, -1, -2), equal_nan=True):
        return None
    i, j = np.triu_indices(x.shape[-1])
    tasks = var[dims.TASK].values
    pairs = [f"{tasks[a]}|{tasks[b]}" for a, b in zip(i, j, strict=True)]
    return xr.DataArray(x[..., i, j], dims=(*var.dims[:-2], PAIR), attrs=var.attrs).assign_coords(
        {PAIR: pairs}
    )


def _full(tri: xr.DataArray, n: int) -> xr.DataArray:
    """The symmetric ``(..., task, task_j)`` variable (``n`` tasks) whose upper triangle is
    ``tri``."""
    i, j = np.triu_indices(n)
    x = np.asarray(tri.values)
    full = np.empty((*x.shape[:-1], n, n), x.dtype)
    full[..., i, j] = x
    full[..., j, i] = x
    return xr.DataArray(full, dims=(*tri.dims[:-1], dims.TASK, dims.TASK_J), attrs=tri.attrs)


def save(
    ds: xr.Dataset, path: str | os.PathLike[str], *, keep_bits: int | None = KEEP_BITS
) -> Path:
    """Write ``ds`` (from :func:`gradcomp.ncnet.run` or ``capacity``) to a netCDF file, compactly.

    Args:
        ds: the Dataset.
        path: the ``.nc`` file (written as is: callers that need an atomic write pass a
            temporary path and rename it).
        keep_bits: mantissa bits kept of the float32 traces :data:`ROUNDED` (1 to 23), or
            None (or 23, all of float32's) to store them bit for bit (module docstring).

    Returns:
        The path written.
    """
    if keep_bits is not None and not 1 <= keep_bits <= 23:
        raise ValueError(f"keep_bits must be in 1..23 or None, got {keep_bits}")
    drop = [v for v in DERIVED if v in ds.data_vars] if "gram" in ds.data_vars else []
    out = ds.drop_vars(drop)
    if drop:
        out.attrs[_MARK] = " ".join(drop)
    for name in ROUNDED:
        if name not in out.data_vars or out[name].dtype != np.float32:
            continue
        var = out[name]
        if keep_bits is not None and keep_bits < 23:
            var = var.copy(data=bit_round(var.values, keep_bits))
            var.attrs[QUANTIZE_ATTR] = np.int32(keep_bits)
        tri = _triu(var)
        if tri is not None:
            out = out.drop_vars(name)
            out[name + _TRIU] = tri
        else:
            out[name] = var
    encoding = encoding_for(out)
    for key, var in out.data_vars.items():
        # one HDF5 chunk a variable compresses 10-20 % better than h5py's guessed chunks
        if var.ndim and 0 < var.nbytes <= _ONE_CHUNK:
            encoding.setdefault(str(key), {})["chunksizes"] = var.shape
    out.to_netcdf(path, engine="h5netcdf", encoding=encoding)
    return Path(path)


def open_dataset(path: str | os.PathLike[str]) -> xr.Dataset:
    """Read a file written by :func:`save` into memory, with ``grad_norm`` and ``cosine`` restored.

    Files written by ``xarray`` directly (older ``gradcomp ncnet`` outputs) are read as they are.
    """
    with xr.open_dataset(path, engine="h5netcdf") as f:
        ds = f.load()
    order = [str(v) for v in ds.data_vars]
    stored = [v for v in order if v.endswith(_TRIU) and PAIR in ds[v].dims]
    for tri_name in stored:
        ds[tri_name.removesuffix(_TRIU)] = _full(ds[tri_name], ds.sizes[dims.TASK])
    if stored:
        ds = ds.drop_vars([*stored, PAIR])
        ds = ds[[v.removesuffix(_TRIU) if v in stored else v for v in order]]
    names = str(ds.attrs.pop(_MARK, "")).split()
    if names:
        gram = ds["gram"]
        values = np.asarray(gram.values)
        made = {
            "grad_norm": (gram.dims[:-1], grad_norm(values)),
            "cosine": (gram.dims, cosine(values)),
        }
        for name in names:
            ds[name] = made[name]
        ds = dims.annotate(ds)
    return ds
