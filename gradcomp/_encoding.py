"""How gradcomp Datasets are stored on disk: the smallest lossless dtypes, and compression.

:func:`encoding_for` gives the ``encoding`` argument of ``Dataset.to_netcdf`` (and, with
``engine="zarr"``, of ``Dataset.to_zarr``: the dtypes only, zarr compresses by itself):

- ±1 outcomes (float32 variables whose finite values are all −1 or +1, NaN for a diverged run)
  are stored as ``int8`` with the CF ``_FillValue`` :data:`OUTCOME_FILL` (0, never an outcome)
  for NaN; xarray decodes them back to the same float32 values, NaN included;
- booleans are stored as xarray stores them (``int8`` with ``dtype: bool``, decoded to bool);
- every other variable keeps its dtype (float32 statistics stay float32: their values are
  stored bit for bit);
- with ``engine="h5netcdf"`` every data variable is compressed with gzip level
  :data:`GZIP_LEVEL` after the HDF5 byte shuffle (lossless).

So ``xr.open_dataset(path)`` after ``ds.to_netcdf(path, encoding=encoding_for(ds))`` gives the
same values and dtypes as ``ds`` (``xarray.testing.assert_identical`` holds after ``.load()``,
tested). Both the netCDF and a Zarr writer call this one function.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

__all__ = [
    "GZIP_LEVEL",
    "KEEP_BITS",
    "OUTCOME_FILL",
    "QUANTIZE_ATTR",
    "async_array",
    "bit_round",
    "encode_zarr",
    "encoding_for",
    "is_outcome",
]

#: the stored value of a NaN outcome (CF ``_FillValue``); 0 is never a ±1 outcome
OUTCOME_FILL = np.int8(0)
#: default mantissa bits kept of rounded traces: relative error ≤ 2**-12 = 2.4e-4 (NCnet files)
KEEP_BITS = 11
#: the netCDF-C 4.9 attribute that records how many mantissa bits a quantized variable keeps
QUANTIZE_ATTR = "_QuantizeBitRoundNumberOfSignificantBits"
#: gzip (zlib) level: level 9 gave files < 1 % smaller, several times slower to write
GZIP_LEVEL = 4


def is_outcome(var: xr.Variable | xr.DataArray) -> bool:
    """Whether ``var`` is a float32 array of ±1 outcomes (NaN allowed), stored exactly as int8."""
    if var.dtype != np.float32 or var.size == 0:
        return False
    v = np.asarray(var.values)
    return bool(np.all((v == 1) | (v == -1) | np.isnan(v)))


def encoding_for(ds: xr.Dataset, *, engine: str = "h5netcdf") -> dict[str, dict[str, Any]]:
    """The lossless on-disk ``encoding`` of every data variable of ``ds`` (module docstring).

    Args:
        ds: the Dataset to write.
        engine: ``"h5netcdf"`` (dtypes and gzip + shuffle) or ``"zarr"`` (dtypes only).

    Returns:
        ``{name: encoding}``, to pass as ``encoding=`` (merge it with chunking keys if needed).
    """
    if engine not in ("h5netcdf", "zarr"):
        raise ValueError(f"engine must be 'h5netcdf' or 'zarr', got {engine!r}")
    out: dict[str, dict[str, Any]] = {}
    for name, var in ds.data_vars.items():
        enc: dict[str, Any] = {}
        if is_outcome(var):
            enc.update(dtype="int8", _FillValue=OUTCOME_FILL)
        if engine == "h5netcdf" and var.ndim > 0:
            enc.update(compression="gzip", compression_opts=GZIP_LEVEL, shuffle=True)
        if enc:
            out[str(name)] = enc
    return out


def bit_round(x: np.ndarray, keep_bits: int) -> np.ndarray:
    """``x`` (float32) with its mantissa rounded to ``keep_bits`` bits, round half to even.

    The BitRound of Klöwer et al. (2021, Nat. Comput. Sci. 1, 713) and netCDF-C 4.9: the dropped
    bits become zeros, which gzip stores almost for free. The relative error is at most
    ``2**-(keep_bits + 1)``; NaN and ±inf are kept; ``keep_bits=23`` returns ``x`` unchanged.

    Args:
        x: a float32 array.
        keep_bits: mantissa bits kept, 1 to 23.
    """
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise TypeError(f"bit_round takes float32, got {x.dtype}")
    if not 1 <= keep_bits <= 23:
        raise ValueError(f"keep_bits must be in 1..23, got {keep_bits}")
    if keep_bits == 23:
        return x.copy()
    drop = 23 - keep_bits
    bits = np.ascontiguousarray(x).view(np.uint32)
    # round half to even: add half an ulp of the kept part, minus one when the kept part is even
    odd = (bits >> np.uint32(drop)) & np.uint32(1)
    half = np.uint32((1 << (drop - 1)) - 1)
    mask = np.uint32((0xFFFFFFFF >> drop) << drop)
    out = ((bits + half + odd) & mask).view(np.float32)
    # non-finite values, and the rare round-up past the largest float32, keep their value
    return np.where(np.isfinite(out), out, x)


def encode_zarr(var: xr.Variable) -> xr.Variable:
    """``var`` CF-encoded as xarray writes it into a Zarr v3 array (fill values, bool → int8):
    for the region writes that bypass ``Dataset.to_zarr``. xarray's encoder takes
    ``zarr_format`` only from 2025.3; before, it encodes as for format 2, the same for the
    numeric and boolean variables gradcomp writes."""
    from xarray.backends.zarr import encode_zarr_variable

    try:
        return encode_zarr_variable(var, zarr_format=3)
    except TypeError:  # xarray < 2025.3
        return encode_zarr_variable(var)


def async_array(arr: Any) -> Any:
    """The asynchronous array behind a ``zarr.Array`` (public from zarr 3.1.x, ``_async_array``
    before), for writing several regions concurrently."""
    return arr.async_array if hasattr(arr, "async_array") else arr._async_array
