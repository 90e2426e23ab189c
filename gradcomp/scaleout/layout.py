"""The Zarr v3 layout of a sweep store: the whole grid laid out once, each chunk written by region.

The layout ``data.zarr`` holds every variable at its full size over the grid's axes and seeds.
Its metadata (dims, dtypes, attrs, the grid coordinates, consolidated into the root ``zarr.json``)
is written once, built in a temporary folder and renamed into place, when the first chunk is
stored; each finished chunk then writes only its own region. A Zarr chunk is one cell of the named
axes × one block of ``seeds_per_chunk`` seeds (aligned to multiples of it from seed 0, as the
grid's blocks are) × the full extent of every other dim, so a sweep chunk writes one Zarr chunk
file per variable and no two sweep chunks share a file. Opening the store reads the consolidated
metadata only: O(1) in the number of chunks.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from gradcomp._atomic import replacing
from gradcomp._encoding import async_array, encode_zarr
from gradcomp.dims import SEED
from gradcomp.scaleout.grid import Chunk

__all__ = ["DATA", "Layout", "create", "open_layout"]

DATA = "data.zarr"

Axes = tuple[tuple[str, tuple[Any, ...]], ...]


@contextmanager
def _quiet() -> Iterator[None]:
    """Zarr's notes that consolidated metadata is not yet part of the v3 spec (it is readable by
    zarr-python and xarray, which is what opens these stores)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        yield


def _region_dims(var: xr.Variable, names: Sequence[str]) -> bool:
    return any(d in var.dims for d in (*names, SEED))


class Layout:
    """The Zarr layout at ``root / DATA``: its axes, seed origin and the region of each chunk.

    Args:
        path: the layout folder (``store / DATA``, or a new layout being built next to it).
    """

    def __init__(self, path: Path):
        self.path = path
        with _quiet():
            ds = xr.open_zarr(self.path, consolidated=True, chunks=None, decode_cf=False)
        self.names: tuple[str, ...] = tuple(ds.attrs["sweep_axes"])
        self.axes: Axes = tuple((n, tuple(ds[n].values.tolist())) for n in self.names)
        seeds = ds[SEED].values
        self.seed_lo, self.seed_hi = int(seeds[0]), int(seeds[-1]) + 1
        self.k = int(ds.attrs["sweep_seeds_per_chunk"])
        #: variables each chunk writes (those with a grid or seed dim, index coords excluded)
        self.written = tuple(
            str(n)
            for n, v in ds.variables.items()
            if _region_dims(v, self.names) and n not in (*self.names, SEED)
        )
        self.fixed = {str(n): v for n, v in ds.variables.items() if not _region_dims(v, self.names)}
        self._index = {n: {v: i for i, v in enumerate(vals)} for n, vals in self.axes}
        self._arrays: dict[str, Any] = {}
        ds.close()

    def covers(self, names: Sequence[str], axes: Axes, seed_lo: int, seed_hi: int) -> bool:
        """Whether a grid with these axes and seeds fits in this layout."""
        if tuple(names) != self.names:
            return False
        ok = all(v in self._index[n] for n, vals in axes for v in vals)
        return ok and self.seed_lo <= seed_lo and seed_hi <= self.seed_hi

    def region(self, chunk: Chunk) -> dict[str, slice]:
        """Index slices of ``chunk`` in the layout, per grid axis and ``seed``."""
        out = {n: slice(i, i + 1) for n, i in ((n, self._index[n][v]) for n, v in chunk.coords)}
        out[SEED] = slice(chunk.seed_start - self.seed_lo, chunk.seed_stop - self.seed_lo)
        return out

    def _array(self, name: str) -> Any:
        import zarr

        if name not in self._arrays:
            # write_empty_chunks: a chunk equal to the fill value still gets its file, so every
            # chunk's files exist and their sizes can be checked
            # (set at opening: Array.with_config exists only from zarr 3.1.6)
            with zarr.config.set({"array.write_empty_chunks": True}):
                arr = zarr.open_array(self.path / name, mode="r+")
            self._arrays[name] = arr
        return self._arrays[name]

    def _where(self, name: str, region: Mapping[str, slice]) -> tuple[slice, ...]:
        dims = self._array(name).metadata.dimension_names
        return tuple(region.get(str(d), slice(None)) for d in dims)

    def files(self, chunk: Chunk) -> list[str]:
        """The Zarr chunk files (relative to the store) that hold ``chunk``."""
        region, out = self.region(chunk), []
        for name in self.written:
            arr = self._array(name)
            where = self._where(name, region)
            key = tuple(
                0 if s.start is None else s.start // c
                for s, c in zip(where, arr.chunks, strict=True)
            )
            out.append(f"{DATA}/{name}/{arr.metadata.encode_chunk_key(key)}")
        return out

    def write(self, chunk: Chunk, part: xr.Dataset | Mapping[Hashable, xr.Variable]) -> str:
        """Write ``part`` (the chunk's Dataset or its variables) into its region; return the
        digest of the values written. The variables' arrays are written concurrently.

        Raises:
            ValueError: ``part`` does not fit the layout (other variables, or coordinates of a
                non-grid dim that differ from the first chunk's).
        """
        import asyncio

        from zarr.core.sync import sync

        variables = part.variables if isinstance(part, xr.Dataset) else part
        names = {str(n) for n, v in variables.items() if _region_dims(v, self.names)}
        names -= {*self.names, SEED}
        if names != set(self.written):
            raise ValueError(
                f"chunk {chunk.key} has variables {sorted(names)}, the store's other chunks "
                f"{sorted(self.written)}: an experiment must return the same variables in every "
                "cell"
            )
        for name, var in self.fixed.items():
            if name in variables and not np.array_equal(variables[name].values, var.values):
                raise ValueError(
                    f"chunk {chunk.key}: coordinate {name!r} differs from the first chunk's; "
                    "an experiment must return the same non-grid coordinates in every cell"
                )
        region = self.region(chunk)
        values, writes = {}, []
        for name in self.written:
            var = encode_zarr(variables[name])
            arr = self._array(name)
            order = [str(d) for d in arr.metadata.dimension_names]
            if sorted(order) != sorted(str(d) for d in var.dims):
                raise ValueError(f"chunk {chunk.key}: variable {name!r} has dims {var.dims}")
            data = np.asarray(var.transpose(*order).values, dtype=arr.dtype)
            values[name] = data
            writes.append(async_array(arr).setitem(self._where(name, region), data))

        async def write_all() -> None:
            await asyncio.gather(*writes)

        sync(write_all())
        return _digest(values)

    def digest(self, chunk: Chunk) -> str:
        """The digest of the values stored in ``chunk``'s region (reads them)."""
        region = self.region(chunk)
        return _digest({n: self._array(n)[self._where(n, region)] for n in self.written})

    def read(self, chunk: Chunk) -> xr.Dataset:
        """``chunk``'s region as an in-memory Dataset (the inverse of :meth:`write`)."""
        with _quiet():
            ds = xr.open_zarr(self.path, consolidated=True, chunks=None)
        return ds.isel(self.region(chunk)).load()


def _digest(values: Mapping[str, np.ndarray]) -> str:
    """sha256 over each variable's name, dtype, shape and C-order bytes."""
    h = hashlib.sha256()
    for name in sorted(values):
        arr = np.ascontiguousarray(values[name])
        h.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def create(
    target: Path,
    part: xr.Dataset,
    axes: Axes,
    seed_lo: int,
    seed_hi: int,
    k: int,
    attrs: Mapping[str, Any],
) -> None:
    """Lay out ``root / DATA`` for ``axes`` × seeds ``[seed_lo, seed_hi)`` from a prototype.

    ``part`` (a chunk's Dataset, or a former layout) gives each variable's dims, dtype, attrs and
    the extent and coordinates of the non-grid dims. Only metadata and coordinates are written
    (the data arrays are left unwritten); the layout is built in a temporary folder and renamed
    over any previous ``target``.
    """
    import dask.array as da

    names = [n for n, _ in axes]
    lo = seed_lo // k * k  # Zarr chunks aligned like the grid's seed blocks
    sizes: dict[Hashable, int] = {n: len(v) for n, v in axes}
    sizes[SEED] = seed_hi - lo
    coords: dict[Hashable, Any] = {n: (n, list(v), part[n].attrs) for n, v in axes}
    coords[SEED] = (SEED, np.arange(lo, seed_hi), part[SEED].attrs)
    data_vars: dict[Hashable, Any] = {}
    encoding: dict[str, dict[str, Any]] = {}
    for name, var in part.variables.items():
        if name in coords:
            continue
        if _region_dims(var, names):
            shape = tuple(sizes.get(d, n) for d, n in zip(var.dims, var.shape, strict=True))
            chunks = tuple(
                1 if d in names else k if d == SEED else max(n, 1)
                for d, n in zip(var.dims, shape, strict=True)
            )
            full = da.zeros(shape, dtype=var.dtype, chunks=chunks)
            new = xr.Variable(var.dims, full, var.attrs)
            encoding[str(name)] = {"chunks": chunks}
        else:
            values = np.asarray(var.values)
            if values.dtype.kind == "U":
                values = values.astype(object)  # variable-length strings: a Zarr v3 dtype
            new = xr.Variable(var.dims, values, var.attrs)
        if name in part.coords:
            coords[name] = new
        else:
            data_vars[name] = new
    for n in names:
        if np.asarray(coords[n][1]).dtype.kind == "U":
            coords[n] = (n, np.asarray(coords[n][1], dtype=object), coords[n][2])
    ds = xr.Dataset(data_vars, coords=coords, attrs=dict(attrs))
    ds.attrs["sweep_axes"] = names
    ds.attrs["sweep_seeds_per_chunk"] = k
    with replacing(target) as tmp, _quiet():
        ds.to_zarr(tmp, mode="w", compute=False, consolidated=True, zarr_format=3,
                   encoding=encoding)  # fmt: skip


def open_layout(path: Path, chunks: Any = None) -> xr.Dataset:
    """The layout at ``path`` as a Dataset (lazy, Dask-backed with ``chunks={}``)."""
    with _quiet():
        return xr.open_zarr(path, consolidated=True, chunks=chunks)
