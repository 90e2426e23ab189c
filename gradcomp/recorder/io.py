"""Write a recording to Zarr or netCDF so that a crash never leaves a half-written recording.

A recorder with ``path=`` flushes by *appending*: the steps held in memory are added along
``step``, then dropped from memory, so memory holds only the steps recorded since the last flush.

- ``.zarr`` (recommended for long recordings): a Zarr v3 store; each flush appends the new steps
  (``to_zarr(append_dim="step")``), so a flush costs I/O proportional to the steps it adds and the
  total cost of a recording grows linearly with its length. The number of steps flushed completely
  is written last (``<path>/gradcomp.json``, atomically); steps beyond it (a crash mid-append) are
  cut off before the next append or read. An existing store is resumed: appended to, not replaced.
- any other suffix (``.nc``): a netCDF file, rewritten on each flush (a copy of the file, appended
  to and renamed over it), so a flush costs I/O proportional to the file's size.

Encoding: :func:`gradcomp._encoding.encoding_for` (netCDF: gzip level 4 after the byte shuffle,
lossless; every statistic keeps its dtype, so values read back are bit for bit those recorded).
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5netcdf
import numpy as np
import xarray as xr

from gradcomp._atomic import atomic_write, replacing
from gradcomp._encoding import async_array, encode_zarr, encoding_for
from gradcomp.dims import STEP
from gradcomp.recorder.dataset import STEP_VARIABLES, Arrays

__all__ = [
    "append_netcdf",
    "append_zarr",
    "is_zarr",
    "keep_steps",
    "read_steps",
    "write_netcdf",
    "zarr_steps",
]

#: file in a recording's Zarr store holding the number of completely flushed steps
COMMITTED = "gradcomp.json"

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
    return atomic_write(
        target, lambda tmp: ds.to_netcdf(tmp, engine="h5netcdf", encoding=encoding_for(ds))
    )


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
    if base is not None and not Path(base).is_file():
        raise ValueError(f"{base} (where earlier recorded steps were flushed) no longer exists")
    with replacing(target) as tmp:
        if base is None:
            enc = encoding_for(ds)
            for name, chunks in _chunking(ds).items():
                enc.setdefault(name, {}).update(chunks)
            ds.to_netcdf(tmp, engine="h5netcdf", unlimited_dims=[STEP], encoding=enc)
        else:
            shutil.copyfile(base, tmp)
            with h5netcdf.File(tmp, "a") as f:
                _append(f, ds, base)
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


def is_zarr(path: str | os.PathLike[str]) -> bool:
    """Whether a recording at ``path`` is a Zarr store (suffix ``.zarr``)."""
    return Path(path).suffix == ".zarr"


@contextmanager
def _quiet() -> Iterator[None]:
    """Zarr's notes that consolidated metadata is not yet part of the v3 spec and that the step
    count file (:data:`COMMITTED`) is not a Zarr node."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        warnings.filterwarnings("ignore", message=f".*{COMMITTED} is not recognized.*")
        yield


def zarr_steps(path: str | os.PathLike[str]) -> tuple[int, int | None]:
    """``(n, last step)`` of the steps completely flushed to the Zarr recording at ``path``
    (``(0, None)`` if there is none)."""
    try:
        n = int(json.loads((Path(path) / COMMITTED).read_text())["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0, None
    if n == 0:
        return 0, None
    with _quiet(), xr.open_zarr(path, consolidated=True, chunks=None) as ds:
        return n, int(ds[STEP].values[n - 1])


def _commit(target: Path, n: int) -> None:
    atomic_write(target / COMMITTED, json.dumps({"steps": n}))


def _cut(target: Path, n: int) -> None:
    """Cut every ``step`` array of the store to its ``n`` committed steps (after a crash)."""
    import zarr

    with _quiet():
        arrays = list(zarr.open_group(target, mode="r+", use_consolidated=False).arrays())
    cut = False
    for _, arr in arrays:
        dims = getattr(arr.metadata, "dimension_names", None) or ()
        if STEP in dims and arr.shape[dims.index(STEP)] != n:
            shape = list(arr.shape)
            shape[dims.index(STEP)] = n
            arr.resize(tuple(shape))
            cut = True
    if cut:
        with _quiet():
            zarr.consolidate_metadata(target)


def append_zarr(
    ds: xr.Dataset, path: str | os.PathLike[str], n_before: int, *, check: bool = True
) -> Path:
    """Append ``ds``'s steps to the Zarr recording at ``path`` holding ``n_before`` steps.

    With ``n_before == 0`` a new store is written (built next to ``path`` and renamed over it).
    Otherwise the store's variables and non-``step`` coordinates must equal ``ds``'s, and its
    last step must precede ``ds``'s first; the new steps are appended along ``step`` (only they
    are written), the global attributes are replaced by ``ds``'s, and the new step count is
    committed last. ``check=False`` skips reading the store back (for the appends after a
    recorder's first, to a store only it writes).

    Raises:
        ValueError: the store does not hold this recording's variables or coordinates, or its
            steps do not precede ``ds``'s.
    """
    import zarr

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    n_new = ds.sizes[STEP]
    strings = {n: v.astype(object) for n, v in ds.coords.items() if v.dtype.kind == "U"}
    ds = ds.assign_coords(strings)  # variable-length strings: a Zarr v3 dtype
    if n_before == 0:
        enc = {k: {"chunks": v["chunksizes"]} for k, v in _chunking(ds).items()}
        with replacing(target) as tmp:
            with _quiet():
                ds.to_zarr(tmp, mode="w", zarr_format=3, consolidated=True, encoding=enc)
            _commit(tmp, n_new)
        return target
    if not (target / COMMITTED).exists():
        raise ValueError(f"{target} (where earlier recorded steps were flushed) no longer exists")
    if check:
        _cut(target, n_before)
        with _quiet(), xr.open_zarr(target, consolidated=True, chunks=None) as old:
            _check_same(old, ds, target, n_before)
    with _quiet():
        _append_arrays(ds, target, n_before)
        group = zarr.open_group(target, mode="r+", use_consolidated=False)
        group.attrs.put(_attrs(ds.attrs))  # replaces them all, in one write
        zarr.consolidate_metadata(target)
    _commit(target, n_before + n_new)
    return target


def _append_arrays(ds: xr.Dataset, target: Path, n_before: int) -> None:
    """Extend every ``step`` array of the store by ``ds``'s steps and write them (concurrently):
    what ``ds.to_zarr(append_dim="step")`` does, without re-reading and re-writing the rest."""
    import asyncio

    import zarr
    from zarr.core.sync import sync

    n1 = n_before + ds.sizes[STEP]
    writes = []
    for name, var in ds.variables.items():
        if STEP not in var.dims:
            continue
        arr = zarr.open_array(target / str(name), mode="r+")
        dims = tuple(getattr(arr.metadata, "dimension_names", None) or ())
        if dims != var.dims or dims[0] != STEP or arr.shape[0] != n_before:
            raise ValueError(f"{target}: array {name!r} does not continue this recording")
        arr.resize((n1, *arr.shape[1:]))
        data = np.asarray(encode_zarr(var).values, dtype=arr.dtype)
        writes.append(async_array(arr).setitem(slice(n_before, n1), data))

    async def write_all() -> None:
        await asyncio.gather(*writes)

    sync(write_all())


def _attrs(attrs: dict[Any, Any]) -> dict[str, Any]:
    return {str(k): v.tolist() if isinstance(v, np.ndarray | np.generic) else v
            for k, v in attrs.items()}  # fmt: skip


def _check_same(old: xr.Dataset, ds: xr.Dataset, target: Path, n_before: int) -> None:
    names = sorted(str(n) for n, v in ds.variables.items() if STEP in v.dims)
    on_file = sorted(str(n) for n, v in old.variables.items() if STEP in v.dims)
    fixed = [n for n, v in ds.variables.items() if STEP not in v.dims]
    differ = [
        str(n) for n in fixed
        if n not in old.variables or not np.array_equal(old[n].values, ds[n].values)
    ]  # fmt: skip
    if names != on_file or differ:
        raise ValueError(
            f"{target} holds another recording (variables {on_file}"
            + (f", differing {differ}" if differ else "")
            + f" instead of {names}): remove it or record to another path"
        )
    last, first = int(old[STEP].values[n_before - 1]), int(ds[STEP].values[0])
    if first <= last:
        raise ValueError(
            f"{target} already holds steps up to {last}; a resumed recording must continue "
            f"after it (got step {first}): pass step= values above {last}, or record to another "
            "path"
        )


def read_steps(path: str | os.PathLike[str], names: Sequence[str], n_steps: int) -> Arrays:
    """The ``step``-dimensioned arrays ``names`` (of :data:`STEP_VARIABLES`) of a recording
    written by :func:`append_netcdf` or :func:`append_zarr`, checking that it holds the
    ``n_steps`` steps flushed to it.

    Raises:
        ValueError: the file is missing, or does not hold what was flushed to it.
    """
    unknown = set(names) - set(STEP_VARIABLES)
    if unknown:
        raise ValueError(f"not step variables of a recording: {sorted(unknown)}")
    if is_zarr(path):
        n, _ = zarr_steps(path)
        if n == 0:
            raise ValueError(
                f"{path} (where {n_steps} recorded step(s) were flushed) no longer exists"
            )
        with _quiet(), xr.open_zarr(path, consolidated=True, chunks=None) as ds:
            missing = [k for k in names if k not in ds.variables]
            if missing or n != n_steps:
                raise ValueError(
                    f"{path} no longer holds the {n_steps} step(s) flushed to it (it has "
                    f"{n}, missing {missing}): was it changed or replaced?"
                )
            return {k: np.asarray(ds.variables[k][:n_steps].values) for k in names}
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
        A Zarr recording keeps its steps below ``before`` by lowering its committed step count
        (the later steps are cut off before the next append or read).
    """
    if is_zarr(path):
        n, _ = zarr_steps(path)
        if not n:
            return 0, None
        with _quiet(), xr.open_zarr(path, consolidated=True, chunks=None) as ds:
            steps = np.asarray(ds[STEP].values[:n])
        kept = _below(steps, before, path)
        if kept < n:
            _commit(Path(path), kept)
            _cut(Path(path), kept)
        return kept, (int(steps[kept - 1]) if kept else None)
    if not Path(path).is_file():
        return 0, None
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        steps = np.asarray(ds[STEP].values)
        kept = _below(steps, before, path)
        if kept < len(steps):
            head = ds.isel({STEP: slice(0, kept)}).load()
    if kept < len(steps):
        if kept == 0:
            Path(path).unlink()
        else:
            append_netcdf(head, path, None)
    return kept, (int(steps[kept - 1]) if kept else None)


def _below(steps: np.ndarray, before: int, path: str | os.PathLike[str]) -> int:
    """How many of a recording's first ``steps`` are numbered below ``before`` (they must come
    first: the steps increase)."""
    kept = int((steps < before).sum())
    if kept and not (steps[:kept] < before).all():
        raise ValueError(f"{path}: its steps are not in increasing order")
    return kept
