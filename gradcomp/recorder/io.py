"""Write a recording to netCDF, atomically, so a crash never leaves a half-written file.

A recorder with ``path=`` flushes by *appending*: the steps held in memory are added along the
unlimited ``step`` dimension of the file (a copy of the file, appended to and renamed over it), then
dropped from memory. Memory holds only the steps recorded since the last flush; each flush costs
I/O proportional to the file's size (the copy).

Encoding: :func:`gradcomp._encoding.encoding_for` (gzip level 4 after the byte shuffle, lossless;
every statistic keeps its dtype, so values read back are bit for bit those recorded).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import h5netcdf
import numpy as np
import xarray as xr

from gradcomp._dims import STEP
from gradcomp._encoding import encoding_for
from gradcomp.recorder.dataset import STEP_VARIABLES, Arrays

__all__ = ["append_netcdf", "keep_steps", "read_steps", "write_netcdf"]

_CHUNK_BYTES = 1 << 18  # about 256 KiB per chunk along ``step``
_MAX_CHUNK = 4096


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
    ds.to_netcdf(tmp, engine="h5netcdf", encoding=encoding_for(ds))
    os.replace(tmp, target)
    return target


def append_netcdf(
    ds: xr.Dataset, path: str | os.PathLike[str], base: str | os.PathLike[str] | None
) -> Path:
    """Write ``base``'s steps followed by ``ds``'s to ``path``, atomically.

    Without ``base``, ``ds`` is written as a new file whose ``step`` dimension is unlimited
    (chunked along ``step``). With ``base`` (a file this function wrote, possibly ``path`` itself)
    the file is copied to a temporary file, every variable with a ``step`` dimension is extended by
    ``ds``'s steps, the global attributes are replaced by ``ds``'s, and the copy is renamed to
    ``path``. Only ``ds`` is ever in memory.

    Args:
        ds: the new steps (same variables and non-``step`` coordinates as ``base``).
        path: target file; its folder is created if needed.
        base: the file holding the earlier steps, or ``None``.

    Returns:
        The path written.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".partial")
    if base is None:
        enc = encoding_for(ds)
        for name, chunks in _chunking(ds).items():
            enc.setdefault(name, {}).update(chunks)
        ds.to_netcdf(tmp, engine="h5netcdf", unlimited_dims=[STEP], encoding=enc)
    else:
        if not Path(base).is_file():
            raise ValueError(f"{base} (where earlier recorded steps were flushed) no longer exists")
        shutil.copyfile(base, tmp)
        try:
            with h5netcdf.File(tmp, "a") as f:
                _append(f, ds, base)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    os.replace(tmp, target)
    return target


def _chunking(ds: xr.Dataset) -> dict[str, dict[str, tuple[int, ...]]]:
    """Chunks of about :data:`_CHUNK_BYTES` along ``step`` for the variables that have it."""
    out = {}
    for name, var in ds.variables.items():
        if var.dims[:1] == (STEP,):
            rest = tuple(int(n) for n in var.shape[1:])
            per_step = max(int(np.prod(rest, dtype=np.int64)) * var.dtype.itemsize, 1)
            along = min(max(_CHUNK_BYTES // per_step, 1), _MAX_CHUNK)
            out[str(name)] = {"chunksizes": (along, *(max(n, 1) for n in rest))}
    return out


def _append(f: h5netcdf.File, ds: xr.Dataset, base: str | os.PathLike[str]) -> None:
    names = [str(n) for n, v in ds.variables.items() if STEP in v.dims]
    on_file = {n for n, v in f.variables.items() if STEP in v.dimensions}
    if set(names) != on_file:
        raise ValueError(
            f"{base} does not hold this recording's variables ({sorted(on_file)} instead of "
            f"{sorted(names)}): was it changed since the recorder flushed to it?"
        )
    n0 = f.dimensions[STEP].size
    n1 = n0 + ds.sizes[STEP]
    f.resize_dimension(STEP, n1)
    for name in names:
        f.variables[name][n0:n1, ...] = ds.variables[name].values
    for key in list(f.attrs):
        if key not in ds.attrs:
            del f.attrs[key]
    for key, value in ds.attrs.items():
        f.attrs[key] = value


def read_steps(path: str | os.PathLike[str], names: Sequence[str], n_steps: int) -> Arrays:
    """The ``step``-dimensioned arrays ``names`` (of :data:`STEP_VARIABLES`) of a file written by
    :func:`append_netcdf`, checking that it holds the ``n_steps`` steps flushed to it.

    Raises:
        ValueError: the file is missing, or does not hold what was flushed to it.
    """
    unknown = set(names) - set(STEP_VARIABLES)
    if unknown:
        raise ValueError(f"not step variables of a recording: {sorted(unknown)}")
    try:
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            missing = [n for n in names if n not in ds.variables]
            if missing or ds.sizes.get(STEP, 0) != n_steps:
                raise ValueError(
                    f"{path} no longer holds the {n_steps} step(s) flushed to it (it has "
                    f"{ds.sizes.get(STEP, 0)}, missing {missing}): was it changed or replaced?"
                )
            return {n: np.asarray(ds.variables[n].values) for n in names}
    except FileNotFoundError as err:
        raise ValueError(
            f"{path} (where {n_steps} recorded step(s) were flushed) no longer exists"
        ) from err


def keep_steps(path: str | os.PathLike[str], before: int) -> tuple[int, int | None]:
    """Keep only the steps numbered below ``before`` of a recording file (atomically rewritten
    when it holds later ones), for a run resumed at step ``before``.

    Returns:
        ``(steps kept, last kept step number or None)``; ``(0, None)`` when ``path`` is missing.
    """
    if not Path(path).is_file():
        return 0, None
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        steps = np.asarray(ds[STEP].values)
        kept = int((steps < before).sum())
        if kept and not (steps[:kept] < before).all():
            raise ValueError(f"{path}: its steps are not in increasing order")
        if kept < len(steps):
            head = ds.isel({STEP: slice(0, kept)}).load()
    if kept < len(steps):
        if kept == 0:
            Path(path).unlink()
        else:
            append_netcdf(head, path, None)
    return kept, (int(steps[kept - 1]) if kept else None)
