"""The S phase diagram: CHSH S (with interval) and cbd_margin over NCnet width × learning rate.

Runs the grid through the Dask sweep path (``gradcomp.scaleout.sweep``) into a resumable store,
then estimates S per cell from the final-step outcomes and writes ``results/phase_diagram.nc``
with the sweep's wall time, chunks per second and seed count in its attrs, and the committed
summary ``analyses/summaries/phase_diagram.json`` (with the machine and its load).

    python analyses/phase_diagram.py                     # full grid (2,000 seeds per cell)
    python analyses/phase_diagram.py --seeds 1000        # smaller, same grid
    python analyses/phase_diagram.py --tiny --out /tmp/pd.nc --store /tmp/pd_store
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from gradcomp import chsh, summary
from gradcomp.dims import ALICE, BOB, SEED, STEP
from gradcomp.ncnet import NCnetConfig
from gradcomp.scaleout import NCnetExperiment, sweep

NAME = "phase_diagram"
SUMMARY = summary.ROOT / "analyses" / "summaries" / f"{NAME}.json"
#: per-cell variables quoted in the docs (those the estimate provides)
PER_CELL = (
    "S",
    "S_lo",
    "S_hi",
    "delta",
    "cbd_margin",
    "cbd_margin_lo",
    "cbd_margin_hi",
    "cbd_p_value",
    "s_odd",
    "remote_flip_fraction",
    "S_degenerate",
    "S_trivial",
    "n_excluded",
)


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", type=_ints, default=[2, 3, 4, 5])
    p.add_argument("--lrs", type=_floats, default=[0.1, 0.25, 0.5, 1.0, 2.0])
    p.add_argument("--seeds", type=int, default=2000, help="seeds per cell")
    p.add_argument("--seeds-per-chunk", type=int, default=250)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--workers", type=int, default=None, help="LocalCluster worker processes")
    p.add_argument("--scheduler", default=None, help="tcp://HOST:PORT of a Dask scheduler")
    p.add_argument("--n-boot", type=int, default=2000)
    p.add_argument(
        "--engine", default="torch", choices=("torch", "c"), help="ncnet.run engine (pinned)"
    )
    p.add_argument("--store", type=Path, default=Path("results/phase_diagram_store"))
    p.add_argument("--out", type=Path, default=Path("results/phase_diagram.nc"))
    p.add_argument("--tiny", action="store_true", help="2 widths × 2 lrs, 32 seeds, 100 steps")
    p.add_argument("--summary", type=Path, default=None, help=f"default {SUMMARY}")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    load0, t_start = summary.load_average(), time.perf_counter()
    path = args.summary or (args.out.with_suffix(".json") if args.tiny else SUMMARY)
    if args.tiny:
        args.widths, args.lrs, args.seeds, args.steps = [2, 3], [0.5, 1.0], 32, 100
        args.seeds_per_chunk, args.n_boot, args.workers = 16, 200, args.workers or 1
    # only the final step is traced: the phase diagram needs the end-of-training outcomes
    config = NCnetConfig(steps=args.steps, trace_every=(args.steps,))
    experiment = NCnetExperiment(config, keep=("a", "b", "acc"), engine=args.engine)
    done_dir = args.store / "done"
    before = len(list(done_dir.glob("*.json"))) if done_dir.exists() else 0
    t0 = time.perf_counter()
    ds = sweep(
        experiment,
        args.store,
        axes={"width": args.widths, "lr": args.lrs},
        seeds=range(args.seeds),
        seeds_per_chunk=args.seeds_per_chunk,
        n_workers=args.workers,
        scheduler=args.scheduler,
        progress=not args.tiny,
    )
    wall = time.perf_counter() - t0
    final = ds.isel({STEP: -1}).load()
    order = (SEED, ALICE, BOB, "width", "lr")
    est = chsh.estimate(final.a.transpose(*order), final.b.transpose(*order), n_boot=args.n_boot)
    n_chunks = len(args.widths) * len(args.lrs) * -(-args.seeds // args.seeds_per_chunk)
    computed = len(list(done_dir.glob("*.json"))) - before
    est.attrs.update(ds.attrs)
    est.attrs.update(
        sweep_wall_s=wall,
        sweep_chunks=n_chunks,
        sweep_chunks_computed=computed,
        sweep_chunks_per_s=computed / wall,
        seeds_per_cell=args.seeds,
        steps=args.steps,
        engine=args.engine,
    )
    run_id = summary.new_run_id()
    est.attrs.update(summary.dataset_attrs(path, run_id))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    est.to_netcdf(args.out, engine="h5netcdf")
    grid = est.transpose("width", "lr", ...)
    summary.write(
        path,
        {
            "widths": grid["width"].values,
            "lrs": grid["lr"].values,
            "seeds_per_cell": args.seeds,
            "steps": args.steps,
            "chunks": n_chunks,
            "engine": args.engine,
            "workers": args.workers or "one per core",
            "chunks_computed": computed,
            "cells": {v: grid[v].values for v in PER_CELL if v in grid},
            "max_cbd_margin": float(grid["cbd_margin"].max()),
            "max_cbd_margin_hi": float(grid["cbd_margin_hi"].max()),
            "n_cells": int(grid["S"].size),
            "n_cells_S_above_2": int((grid["S_lo"] > 2).sum()),
            "n_cells_contextual": int((grid["cbd_margin_lo"] > 0).sum()),
            "by_width": {
                f"{v}_{f}": getattr(grid[v], f)("lr").values
                for v in ("S", "delta", "remote_flip_fraction")
                for f in ("min", "max")
            },
            "max_delta": float(grid["delta"].max()),
        },
        run_id=run_id,
        argv=["analyses/phase_diagram.py", *(sys.argv[1:] if argv is None else argv)],
        timings={"sweep_wall_s": wall, "wall_s": time.perf_counter() - t_start},
        load_start=load0,
    )
    print(est[["S", "S_lo", "S_hi", "cbd_margin"]].to_dataframe().round(3).to_string())
    print(
        f"{n_chunks} chunks ({computed} computed in this run), {args.seeds} seeds per cell, "
        f"wall {wall:.1f} s ({computed / wall:.2f} computed chunks/s, cluster start included)"
    )
    print(f"wrote {args.out} and {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
