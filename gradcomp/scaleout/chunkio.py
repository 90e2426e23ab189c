"""Running one chunk on a worker and reading the store back as one lazy Dataset."""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from gradcomp._dims import ALICE, BOB, LABELS, SEED, STEP, annotate
from gradcomp._provenance import provenance
from gradcomp.scaleout.grid import Chunk, Grid
from gradcomp.scaleout.store import SUFFIX, Verify, _check, read_meta

__all__ = ["AXIS_LABELS", "decode", "encode", "open_store", "run_chunk"]

#: labels of grid axes that are not in gradcomp._dims (hyperparameters)
AXIS_LABELS: dict[str, tuple[str, str]] = {
    "lr": ("learning rate", "1"),
    "init_scale": ("initialisation scale", "1"),
    "steps": ("number of training steps", "1"),
}


def _tally(ds: xr.Dataset) -> tuple[np.ndarray, int] | None:
    """Σ_seeds a·b at the last step per (alice, bob), and the seed count: for the progress bar.

    Seeds with a NaN outcome (a diverged run) are left out, as in the estimate of S.
    """
    if not {"a", "b"} <= set(ds.data_vars):
        return None
    a, b = ds["a"], ds["b"]
    if STEP in a.dims:
        a, b = a.isel({STEP: -1}), b.isel({STEP: -1})
    ok = (a.notnull() & b.notnull()).all([ALICE, BOB])
    ab = (a * b).where(ok, 0).astype(np.int64).sum(SEED).transpose(ALICE, BOB, ...)
    if ab.ndim != 2 or ok.ndim != 1 or not ok.any():
        return None
    return ab.values, int(ok.sum())


def run_chunk(chunk: Chunk, experiment: Any) -> tuple[str, bytes, Any]:
    """Compute one chunk and serialise it with :func:`encode` (runs on a Dask worker).

    The experiment's Dataset gets the chunk's grid coordinates as leading length-1 dimensions, so
    every chunk file is self-describing.

    Returns:
        ``(key, payload bytes, tally)`` with ``tally`` as in :func:`_tally` (or None).
    """
    seeds = chunk.seeds
    ds = experiment(chunk.cell, seeds)
    if not isinstance(ds, xr.Dataset) or SEED not in ds.dims:
        raise ValueError(f"experiment {experiment.name!r} must return a Dataset with a seed dim")
    got = ds[SEED].values.tolist() if SEED in ds.coords else None
    if got != list(seeds):
        raise ValueError(
            f"experiment {experiment.name!r} returned seeds {got!r:.60}, expected {seeds!r}"
        )
    clash = [n for n, _ in chunk.coords if n in ds.dims or n in ds.variables]
    if clash:
        raise ValueError(f"grid axes {clash} collide with the experiment's own variables/dims")
    tally = _tally(ds)
    for name, value in reversed(chunk.coords):
        ds = ds.expand_dims({name: [value]})
    own = {n: (n, "1") for n, _ in chunk.coords if n not in AXIS_LABELS and n not in LABELS}
    annotate(ds, AXIS_LABELS | own)
    return chunk.key, encode(ds), tally


def _plain(value: Any) -> Any:
    """A JSON-able attribute value (numpy scalars and arrays to Python, str subclasses to str)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, str):
        return str(value)  # e.g. torch's TorchVersion
    raise TypeError(f"attribute value {value!r} is not a str, number or array")


def encode(ds: xr.Dataset) -> bytes:
    """Serialise a chunk: ``.npz`` of every variable's array plus a JSON header (dims, attrs).

    Chosen over one netCDF file per chunk because HDF5 metadata cost 40–130 ms per small chunk on
    the project's 2-core machine, against well under 1 ms here (``benchmarks/sweep_overhead.py``);
    the store's one-Dataset view (``consolidated.nc``) is netCDF. No pickles: object arrays are
    refused.
    """
    names = list(ds.variables)
    header = {
        "attrs": ds.attrs,
        "vars": [[n, list(ds[n].dims), ds[n].attrs, n in ds.coords] for n in names],
    }
    arrays = {f"v{i}": np.asarray(ds[n].values) for i, n in enumerate(names)}
    for n, arr in zip(names, arrays.values(), strict=True):
        if arr.dtype.kind == "O":
            raise ValueError(f"variable {n!r} has dtype object; give it a numeric or str dtype")
    text = json.dumps(header, default=_plain).encode()
    buf = io.BytesIO()
    arrays["__header__"] = np.frombuffer(text, np.uint8)
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def decode(payload: bytes) -> xr.Dataset:
    """Inverse of :func:`encode`."""
    with np.load(io.BytesIO(payload), allow_pickle=False) as z:
        header = json.loads(z["__header__"].tobytes())
        data = {n: xr.Variable(d, z[f"v{i}"], a) for i, (n, d, a, _) in enumerate(header["vars"])}
    coords = {n: data[n] for n, _, _, c in header["vars"] if c}
    ds = xr.Dataset({n: v for n, v in data.items() if n not in coords}, coords=coords)
    ds.attrs.update(header["attrs"])
    return ds


def _assemble(root: Path, grid: Grid) -> xr.Dataset:
    """Read every chunk of ``grid`` and place it in one in-memory Dataset."""
    index = {name: {v: i for i, v in enumerate(vals)} for name, vals in grid.axes}
    sizes: dict[Hashable, int] = dict(zip(grid.names, grid.shape, strict=True))
    sizes[SEED] = grid.n_seeds
    full: dict[Hashable, xr.Variable] = {}
    first: xr.Dataset | None = None
    for c in grid.chunks():
        part = decode((root / "chunks" / f"{c.key}{SUFFIX}").read_bytes())
        first = part if first is None else first
        offset: dict[Hashable, int] = {n: index[n][v] for n, v in c.coords}
        offset[SEED] = c.seed_start - grid.seed_start
        for name, var in part.variables.items():
            if name not in full:
                shape = tuple(sizes.get(d, n) for d, n in zip(var.dims, var.shape, strict=True))
                full[name] = xr.Variable(var.dims, np.empty(shape, var.dtype), var.attrs)
            where = tuple(
                slice(offset[d], offset[d] + n) if d in offset else slice(None)
                for d, n in zip(var.dims, var.shape, strict=True)
            )
            full[name].values[where] = var.values
    assert first is not None
    coords = {n: full[n] for n in first.coords}
    ds = xr.Dataset({n: v for n, v in full.items() if n not in coords}, coords=coords)
    ds.attrs.update(first.attrs)
    return ds


def _open_consolidated(target: Path, tag: str) -> xr.Dataset | None:
    """``target`` opened lazily if it is intact and built from the chunks ``tag`` names, else None.

    A truncated or otherwise unreadable file (a crash or a full disk while it was replaced by
    another program, a copy cut short) counts as stale: it is rebuilt from the chunks.
    """
    if not target.exists():
        return None
    try:
        ds = xr.open_dataset(target, engine="h5netcdf", chunks={})
    except Exception:  # h5py raises OSError, ValueError, KeyError, ...
        return None
    if ds.attrs.get("sweep_chunks_sha256") == tag:
        return ds
    ds.close()
    return None


def open_store(
    path: str | os.PathLike[str], *, grid: Grid | None = None, verify: Verify = "size"
) -> xr.Dataset:
    """Open a sweep store as one lazily loaded (Dask-backed) Dataset.

    The chunks are gathered once into ``consolidated.nc`` (written atomically, rebuilt whenever the
    set of finished chunks changes or the file cannot be read; building it holds the grid in memory
    once) and that one netCDF file is opened lazily.

    Args:
        path: the store directory.
        grid: which chunks form the Dataset; default: the grid of the store's latest sweep.
        verify: ``"size"`` (cheap) or ``"hash"`` (reads every chunk) check of each chunk.

    Returns:
        Dims ``(*grid axes, seed, ...)`` with the experiment's variables; attrs hold the store's
        config hash and provenance.

    Raises:
        ValueError: not a store, or some chunks of the grid are missing or corrupt (rerun the
            sweep to compute them).
    """
    root = Path(path)
    meta = read_meta(root)
    if grid is None:
        grid = Grid.from_json(json.dumps(meta["grid"], sort_keys=True))
    chunks = grid.chunks()
    missing = [c.key for c in chunks if not _check(root, c.key, verify)]
    if missing:
        raise ValueError(
            f"the store at {root} lacks {len(missing)} of {len(chunks)} chunks "
            f"(e.g. {missing[0]}); rerun the sweep to compute them"
        )
    sums = hashlib.sha256(grid.to_json().encode())
    for c in chunks:
        sums.update((root / "done" / f"{c.key}.json").read_bytes())
    tag = sums.hexdigest()
    target = root / "consolidated.nc"
    ds = _open_consolidated(target, tag)
    if ds is not None:
        return ds
    ds = _assemble(root, grid)
    ds.attrs = {k: _plain(v) if isinstance(v, str) else v for k, v in ds.attrs.items()}
    ds.attrs.update(provenance(meta["config"]))
    ds.attrs["sweep_config_hash"] = meta["config_hash"]
    ds.attrs["sweep_grid"] = grid.to_json()
    ds.attrs["sweep_chunks_sha256"] = tag
    tmp = target.with_name(f".{target.name}.tmp.{os.getpid()}")
    try:
        ds.to_netcdf(tmp, engine="h5netcdf")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return xr.open_dataset(target, engine="h5netcdf", chunks={})
