"""Scheduler and bookkeeping overhead of ``gradcomp.scaleout.sweep`` per chunk, at >= 10,000 chunks.

Every chunk is trivial (the Toy experiment, one seed per chunk), so what is measured is the
machinery: Dask submission and gathering, netCDF serialisation of the chunk, the driver's atomic
fsync'd writes and done-markers, and the resume check. Rows (all in one run, same machine state):

- ``serial``: the same per-chunk work (compute, serialise, write + marker) in one process, no Dask:
  the baseline.
- ``dask noop``: ``client.map`` of a function that does nothing, gathered in batches: Dask's own
  per-task cost on this cluster.
- ``sweep``: the full sweep over N chunks; also its throughput in the first and last tenth of the
  chunks (from the done-markers' mtimes), which shows whether bookkeeping slows it down as the
  store grows.
- ``resume``: rerunning the finished sweep (every chunk hash-verified and skipped).

    python benchmarks/sweep_overhead.py                 # 10,000 chunks, 2 workers
    python benchmarks/sweep_overhead.py --chunks 2000   # quicker
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def _noop(x: int) -> int:
    return x


def main(argv: list[str] | None = None) -> int:
    from distributed import Client, LocalCluster, as_completed

    from gradcomp.scaleout import ChunkStore, Grid, Toy, sweep
    from gradcomp.scaleout.chunkio import run_chunk

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chunks", type=int, default=10_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--serial-chunks", type=int, default=1000, help="chunks timed for the baseline")
    args = p.parse_args(argv)
    width = 100
    seeds = range(max(1, args.chunks // width))
    n = width * len(seeds)
    axes = {"width": list(range(width))}
    exp = Toy(noise=0.0)
    root = Path(tempfile.mkdtemp(prefix="sweep_overhead_"))
    rows: list[tuple[str, int, float]] = []
    try:
        # serial baseline: the same per-chunk work without Dask
        grid = Grid.build(axes, seeds, 1)
        chunks = grid.chunks()[: args.serial_chunks]
        config = {"experiment": exp.name, "experiment_config": exp.config(), "seeds_per_chunk": 1}
        st = ChunkStore(root / "serial", config, grid)
        t = time.perf_counter()
        for c in chunks:
            st.write(c, run_chunk(c, exp)[1])
        rows.append(("serial (no Dask, 1 process)", len(chunks), time.perf_counter() - t))
        with (
            LocalCluster(
                n_workers=args.workers, threads_per_worker=1, processes=True,
                dashboard_address=":0", silence_logs=40,
            ) as cluster,
            Client(cluster, set_as_default=False) as client,
        ):  # fmt: skip
            client.run(os.getpid)  # warm
            t = time.perf_counter()
            ac = as_completed(client.map(_noop, range(n), pure=False), loop=client.loop)
            for batch in ac.batches():
                client.gather(batch)
            rows.append(("dask noop tasks (map + batched gather)", n, time.perf_counter() - t))
            t = time.perf_counter()
            sweep(exp, root / "sweep", axes=axes, seeds=seeds, seeds_per_chunk=1, client=client,
                  progress=False)  # fmt: skip
            wall = time.perf_counter() - t
            rows.append(("sweep (Dask + serialise + atomic writes)", n, wall))
            t = time.perf_counter()
            sweep(exp, root / "sweep", axes=axes, seeds=seeds, seeds_per_chunk=1, client=client,
                  progress=False)  # fmt: skip
            rows.append(("resume (hash-verify and skip all)", n, time.perf_counter() - t))
        mtimes = np.sort([e.stat().st_mtime for e in os.scandir(root / "sweep" / "done")])
        edges = mtimes[np.linspace(0, len(mtimes) - 1, 11).astype(int)]
        deciles = (len(mtimes) / 10) / np.diff(edges)
        first, last = deciles[0], deciles[-1]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    base = rows[0][2] / rows[0][1]
    print(f"{'what':44s} {'chunks':>7s} {'wall s':>8s} {'ms/chunk':>9s} {'vs serial':>9s}")
    for name, count, sec in rows:
        per = sec / count
        print(f"{name:44s} {count:7d} {sec:8.2f} {1e3 * per:9.3f} {per / base:9.2f}")
    print(
        "sweep throughput per tenth of the chunks (chunks/s):",
        " ".join(f"{d:.0f}" for d in deciles),
    )
    print(
        f"sweep throughput: first tenth {first:.0f} chunks/s, last tenth {last:.0f} chunks/s "
        f"(ratio last/first {last / first:.2f}); workers={args.workers}, cores={os.cpu_count()}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
