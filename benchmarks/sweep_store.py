"""Zarr against the former formats: the sweep store (open time, size, write cost) and recorder
flushes (cumulative cost over a long recording).

Sweep store, at 160 chunks (4 widths × 5 learning rates × 8 blocks of 250 seeds, as the phase
diagram), chunks shaped like NCnet's with a loss trace (``a``, ``b`` int8 and ``loss`` float32
over ``seed × alice × bob × step`` with 21 trace steps, ``diverged`` bool), the same values in
both:

- ``npz + netCDF`` (store format 2, reimplemented here as it was): each chunk an ``.npz`` file
  (atomic, fsync'd) plus its done-marker; opening gathers every chunk into ``consolidated.nc``
  (first open) and opens that file lazily.
- ``zarr`` (format 3, :class:`gradcomp.scaleout.ChunkStore`): the layout is created with the first
  chunk, each chunk writes its region (fsync'd) plus its done-marker; opening reads the
  consolidated metadata.

Reported: write cost per chunk (median ms), first open and a later open (median s), size on disk,
and the ratios; the two opened Datasets are checked equal.

Recorder: ``gradcomp.record(..., path=..., flush_every=100)`` over 10,000 SGD steps of a small MLP
(``units=True``), once to ``r.nc`` (each flush copies the file and appends) and once to ``r.zarr``
(each flush appends the new steps); the time spent in flushes is summed and printed at 1k, 2k,
5k and 10k steps.

    python benchmarks/sweep_store.py            # writes benchmarks/summaries/sweep_store.json
    python benchmarks/sweep_store.py --quick    # fewer chunks and steps, no summary
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from gradcomp import summary as gsummary

SUMMARY = Path(__file__).resolve().parent / "summaries" / "sweep_store.json"


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _chunk(cell: dict[str, Any], seeds: range, n_steps: int = 21) -> xr.Dataset:
    """NCnet-shaped chunk: ±1 outcomes, a loss trace and the diverged flag (values seeded)."""
    rng = np.random.default_rng([seeds.start, int(cell["width"]), int(cell["lr"] * 1000)])
    n = len(seeds)
    dims = ("seed", "alice", "bob", "step")
    out = rng.choice(np.array([-1, 1], np.int8), size=(2, n, 2, 2, n_steps))
    loss = rng.gamma(2.0, 0.1, size=(n, 2, 2, n_steps, 2)).astype(np.float32)
    ds = xr.Dataset(
        {
            "a": (dims, out[0], {"long_name": "Alice's outcome", "units": "1"}),
            "b": (dims, out[1], {"long_name": "Bob's outcome", "units": "1"}),
            "loss": ((*dims, "task"), loss, {"long_name": "task loss", "units": "1"}),
            "diverged": (dims[:3], rng.random((n, 2, 2)) < 0.01),
        },
        coords={
            "seed": np.arange(seeds.start, seeds.stop),
            "alice": ["x0", "x1"],
            "bob": ["y0", "y1"],
            "step": np.linspace(0, 2000, n_steps).astype(np.int64),
            "task": ["A", "B"],
        },
    )
    for name, value in reversed(list(cell.items())):
        ds = ds.expand_dims({name: [value]})
    return ds


# --- the former store (format 2), as it was ---------------------------------------------------


def _old_write(root: Path, key: str, payload: bytes) -> None:
    from gradcomp._atomic import atomic_write

    atomic_write(root / "chunks" / f"{key}.npz", payload, durable=True)
    marker = {"key": key, "size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    atomic_write(root / "done" / f"{key}.json", json.dumps(marker).encode(), durable=True)


def _old_open(root: Path, grid: Any) -> xr.Dataset:
    """Check each chunk's size, gather the chunks into consolidated.nc unless it is current,
    open it lazily (the former ``open_store``)."""
    from gradcomp.scaleout.chunkio import decode

    chunks = grid.chunks()
    sums = hashlib.sha256(grid.to_json().encode())
    for c in chunks:
        marker = (root / "done" / f"{c.key}.json").read_bytes()
        assert (root / "chunks" / f"{c.key}.npz").stat().st_size == json.loads(marker)["size"]
        sums.update(marker)
    tag = sums.hexdigest()
    target = root / "consolidated.nc"
    if target.exists():
        ds = xr.open_dataset(target, engine="h5netcdf", chunks={})
        if ds.attrs.get("sweep_chunks_sha256") == tag:
            return ds
        ds.close()
    index = {name: {v: i for i, v in enumerate(vals)} for name, vals in grid.axes}
    sizes: dict[Any, int] = dict(zip(grid.names, grid.shape, strict=True))
    sizes["seed"] = grid.n_seeds
    full: dict[Any, xr.Variable] = {}
    first = None
    for c in chunks:
        part = decode((root / "chunks" / f"{c.key}.npz").read_bytes())
        first = part if first is None else first
        offset = {n: index[n][v] for n, v in c.coords}
        offset["seed"] = c.seed_start - grid.seed_start
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
    ds.attrs["sweep_chunks_sha256"] = tag
    tmp = target.with_name(f".{target.name}.tmp")
    ds.to_netcdf(tmp, engine="h5netcdf")
    os.replace(tmp, target)
    return xr.open_dataset(target, engine="h5netcdf", chunks={})


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def bench_store(root: Path, n_seeds: int, per_chunk: int, repeats: int) -> dict[str, Any]:
    from gradcomp.scaleout import ChunkStore, Grid, open_store
    from gradcomp.scaleout.chunkio import encode

    axes = {"width": [2, 3, 4, 5], "lr": [0.1, 0.25, 0.5, 1.0, 2.0]}
    grid = Grid.build(axes, range(n_seeds), per_chunk)
    chunks = grid.chunks()
    payloads = [encode(_chunk(c.cell, c.seeds)) for c in chunks]  # what workers send
    old, new = root / "old", root / "new"
    (old / "chunks").mkdir(parents=True)
    (old / "done").mkdir()
    st = ChunkStore(new, {"experiment": "bench"}, grid)
    t_old, t_new = [], []
    for c, p in zip(chunks, payloads, strict=True):  # interleaved: the same machine state
        t_old.append(_timed(lambda c=c, p=p: _old_write(old, c.key, p))[0])
        t_new.append(_timed(lambda c=c, p=p: st.write(c, p))[0])
    first_old, ds_old = _timed(lambda: _old_open(old, grid))
    first_new, ds_new = _timed(lambda: open_store(new))
    xr.testing.assert_equal(
        ds_old[["a", "b", "loss", "diverged"]].load(),
        ds_new[["a", "b", "loss", "diverged"]].load().transpose(*ds_old.a.dims, ...),
    )
    ds_old.close()
    again_old, again_new = [], []
    for _ in range(repeats):
        dt, ds = _timed(lambda: _old_open(old, grid))
        again_old.append(dt)
        ds.close()
        dt, ds = _timed(lambda: open_store(new))
        again_new.append(dt)
        ds.close()
    out = {
        "chunks": len(chunks),
        "seeds_per_chunk": per_chunk,
        "write_ms_per_chunk": {
            "npz_netcdf": 1e3 * statistics.median(t_old),
            "zarr": 1e3 * statistics.median(t_new),
        },
        "open_first_s": {"npz_netcdf": first_old, "zarr": first_new},
        "open_again_s": {
            "npz_netcdf": statistics.median(again_old),
            "zarr": statistics.median(again_new),
        },
        "disk_mb": {"npz_netcdf": _du(old) / 1e6, "zarr": _du(new) / 1e6},
    }
    out["ratio_old_over_zarr"] = {
        k: out[k]["npz_netcdf"] / out[k]["zarr"]
        for k in ("write_ms_per_chunk", "open_first_s", "open_again_s", "disk_mb")
    }
    return out


def bench_recorder(root: Path, n_steps: int, flush_every: int) -> dict[str, Any]:
    import torch
    from torch import nn

    import gradcomp
    from gradcomp.recorder import core

    marks = [m for m in (1000, 2000, 5000, 10_000) if m <= n_steps]
    result: dict[str, Any] = {"flush_every": flush_every, "steps": marks, "cumulative_s": {}}
    for kind, suffix, name in (
        ("netcdf", ".nc", "append_netcdf"),
        ("zarr", ".zarr", "append_zarr"),
    ):
        torch.manual_seed(0)
        m = nn.ModuleDict(
            {
                "trunk": nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh()),
                "heads": nn.ModuleDict({t: nn.Linear(32, 1) for t in "ab"}),
            }
        )
        x, y = torch.randn(16, 8), torch.randn(16, 1)
        opt = torch.optim.SGD(m.parameters(), lr=0.01)  # the statistics change from step to step
        spent: list[float] = []
        real = getattr(core, name)

        def timed(*args: Any, real: Any = real, spent: list[float] = spent, **kw: Any) -> Any:
            t = time.perf_counter()
            out = real(*args, **kw)
            spent.append(time.perf_counter() - t)
            return out

        setattr(core, name, timed)
        cumulative = []
        try:
            path = root / f"r{suffix}"
            with gradcomp.record(m, ["a", "b"], units=True, path=path,
                                 flush_every=flush_every) as rec:  # fmt: skip
                for step in range(1, n_steps + 1):
                    opt.zero_grad()
                    h = m["trunk"](x)
                    rec.backward({t: ((m["heads"][t](h) - y) ** 2).mean() for t in "ab"})
                    opt.step()
                    if step in marks:
                        cumulative.append(sum(spent))
        finally:
            setattr(core, name, real)
        result["cumulative_s"][kind] = cumulative
        result.setdefault("size_mb", {})[kind] = (
            _du(path) / 1e6 if path.is_dir() else (path.stat().st_size / 1e6)
        )
    nc, zr = result["cumulative_s"]["netcdf"], result["cumulative_s"]["zarr"]
    result["ratio_netcdf_over_zarr"] = [a / b for a, b in zip(nc, zr, strict=True)]
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=2000, help="seeds per cell (2000: 160 chunks)")
    p.add_argument("--seeds-per-chunk", type=int, default=250)
    p.add_argument("--steps", type=int, default=10_000, help="recorded steps")
    p.add_argument("--flush-every", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5, help="later opens timed")
    p.add_argument("--quick", action="store_true", help="small sizes, no summary")
    p.add_argument("--summary", type=Path, default=SUMMARY)
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.repeats = 500, 1000, 2
    start, load_start = time.perf_counter(), gsummary.load_average()
    root = Path(tempfile.mkdtemp(prefix="sweep_store_"))
    try:
        store = bench_store(root / "store", args.seeds, args.seeds_per_chunk, args.repeats)
        rec = bench_recorder(root / "rec", args.steps, args.flush_every)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"sweep store, {store['chunks']} chunks of {store['seeds_per_chunk']} seeds")
    print(f"{'':24s} {'npz + netCDF':>13s} {'zarr':>10s} {'old/zarr':>9s}")
    for key, label in (
        ("write_ms_per_chunk", "write, ms per chunk"),
        ("open_first_s", "first open, s"),
        ("open_again_s", "later open, s"),
        ("disk_mb", "on disk, MB"),
    ):
        row = store[key]
        ratio = store["ratio_old_over_zarr"][key]
        print(f"{label:24s} {row['npz_netcdf']:13.4g} {row['zarr']:10.4g} {ratio:9.3g}")
    print(f"\nrecorder, cumulative flush time (s), flush_every={rec['flush_every']}, units=True")
    print(f"{'steps':>8s} {'netCDF':>10s} {'zarr':>10s} {'nc/zarr':>8s}")
    for i, n in enumerate(rec["steps"]):
        nc, zr = rec["cumulative_s"]["netcdf"][i], rec["cumulative_s"]["zarr"][i]
        print(f"{n:8d} {nc:10.3f} {zr:10.3f} {nc / zr:8.2f}")
    if not args.quick:
        gsummary.write(
            args.summary,
            {"store": store, "recorder": rec},
            run_id=gsummary.new_run_id(),
            argv=argv if argv is not None else None,
            timings={"wall_s": time.perf_counter() - start},
            load_start=load_start,
        )
        print(f"wrote {args.summary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
