"""Running one chunk on a worker and reading the store back as one lazy Dataset."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from gradcomp.dims import ALICE, BOB, LABELS, SEED, STEP, annotate
from gradcomp.scaleout.grid import Chunk, Grid
from gradcomp.scaleout.layout import DATA, Layout, open_layout
from gradcomp.scaleout.store import FORMAT, Verify, check_chunk, read_meta

__all__ = ["AXIS_LABELS", "decode", "encode", "open_store", "run_chunk"]

#: labels of grid axes that are not in gradcomp.dims (hyperparameters)
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
    """Serialise a chunk for the trip from a worker to the driver: ``.npz`` of every variable's
    array plus a JSON header (dims, attrs).

    Cheaper than netCDF bytes (HDF5 metadata cost 40–130 ms per small chunk on the project's 2-core
    machine, against well under 1 ms here: ``benchmarks/sweep_overhead.py``); the driver writes
    the decoded chunk into the store's Zarr layout. No pickles: object arrays are refused.
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


def decode_variables(payload: bytes) -> tuple[dict[str, xr.Variable], dict[str, Any]]:
    """The variables of an :func:`encode` payload and its header (cheaper than a Dataset)."""
    with np.load(io.BytesIO(payload), allow_pickle=False) as z:
        header = json.loads(z["__header__"].tobytes())
        data = {n: xr.Variable(d, z[f"v{i}"], a) for i, (n, d, a, _) in enumerate(header["vars"])}
    return data, header


def decode(payload: bytes) -> xr.Dataset:
    """Inverse of :func:`encode`."""
    data, header = decode_variables(payload)
    coords = {n: data[n] for n, _, _, c in header["vars"] if c}
    ds = xr.Dataset({n: v for n, v in data.items() if n not in coords}, coords=coords)
    ds.attrs.update(header["attrs"])
    return ds


def open_store(
    path: str | os.PathLike[str],
    *,
    grid: Grid | None = None,
    verify: Verify | None = None,
) -> xr.Dataset:
    """Open a sweep store as one lazily loaded (Dask-backed) Dataset.

    Reads the Zarr layout's consolidated metadata and lists the done-markers: no chunk is read,
    so opening costs the same however many chunks the store holds.

    Args:
        path: the store directory.
        grid: which chunks form the Dataset; default: the grid of the store's latest sweep.
        verify: ``None`` (default: every chunk of the grid has its done-marker), ``"size"``
            (also the size of each chunk's files) or ``"hash"`` (also reads every chunk back and
            checks its sha256).

    Returns:
        Dims ``(*grid axes, seed, ...)`` with the experiment's variables; attrs hold the store's
        config hash and provenance.

    Raises:
        ValueError: not a store, or some chunks of the grid are missing or corrupt (rerun the
            sweep to compute them).
    """
    root = Path(path)
    meta = read_meta(root)
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"{root} was written by an older gradcomp (store format {meta.get('format')}, this one "
            f"reads {FORMAT}); rerun its sweep into a new store"
        )
    if grid is None:
        grid = Grid.from_json(json.dumps(meta["grid"], sort_keys=True))
    chunks = grid.chunks()
    markers = {p.name[:-5] for p in os.scandir(root / "done") if p.name.endswith(".json")}
    missing = [c.key for c in chunks if c.key not in markers]
    if verify is not None and not missing:
        try:
            lay: Layout | None = Layout(root / DATA)
        except Exception:  # checked below, with the error message
            lay = None
        missing = [c.key for c in chunks if not check_chunk(root, lay, c.key, verify)]
    if missing:
        raise ValueError(
            f"the store at {root} lacks {len(missing)} of {len(chunks)} chunks "
            f"(e.g. {missing[0]}); rerun the sweep to compute them"
        )
    try:
        ds = open_layout(root / DATA, chunks={})
    except Exception as err:  # zarr and xarray raise several kinds on a damaged layout
        raise ValueError(
            f"the store at {root} has an unreadable {DATA} ({type(err).__name__}: {err}); "
            "rerun the sweep into a new store"
        ) from None
    pick = {}
    for name, values in grid.axes:
        index = {v: i for i, v in enumerate(ds[name].values.tolist())}
        pick[name] = [index[v] for v in values]
    lo = grid.seed_start - int(ds[SEED].values[0])
    pick[SEED] = list(range(lo, lo + grid.n_seeds))
    if any(p != list(range(ds.sizes[n])) for n, p in pick.items()):
        ds = ds.isel({n: (slice(p[0], p[-1] + 1) if p == list(range(p[0], p[-1] + 1)) else p)
                      for n, p in pick.items()})  # fmt: skip
    for key in ("sweep_axes", "sweep_seeds_per_chunk"):
        ds.attrs.pop(key, None)
    ds.attrs["sweep_grid"] = grid.to_json()
    return ds
