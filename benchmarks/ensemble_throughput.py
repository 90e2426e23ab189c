"""Throughput of NCnet ensembles: the full default sweep against the per-seed loop.

The full default sweep is widths 1–8 × 4 setting pairs × 2000 seeds × 2000 full-batch steps,
with the default traces (~30 traced steps). The fast path (``--engine``, default ``auto``: the
compiled kernel on the CPU) runs it in full (or ``--seeds``/``--steps`` of it). The torch engine
of the fast path, the generic ``vmap(grad)`` trainer and the per-seed loop (``train_loop``: plain
autograd, ``method="loop"``) run on subsets in the same process, tracing only their last step,
and their times are scaled linearly to the full sweep. Prints one table; speed-ups are against
the loop measured in this run. Writes the committed summary
``benchmarks/summaries/ensemble_throughput.json`` (``--summary`` to change): per method the
measured subset, its wall and CPU seconds scaled to the full sweep, and the speed-ups over the loop
by wall and by CPU time, with the machine and its load (on a shared machine read the CPU columns:
with ``--threads 1`` the process's CPU time is the single thread's).

    python benchmarks/ensemble_throughput.py                 # full sweep
    python benchmarks/ensemble_throughput.py --seeds 512 --steps 500 --threads 1
    python benchmarks/ensemble_throughput.py --device cuda --seeds 4096
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from gradcomp import summary
from gradcomp.ncnet import NCnetConfig, run

SUMMARY = summary.ROOT / "benchmarks" / "summaries" / "ensemble_throughput.json"


def _timed(fn) -> tuple[float, float, object]:
    """Wall-clock and CPU seconds (all threads of this process) of ``fn()``."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t, time.process_time() - c, out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--seeds", type=int, default=2000)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--widths", type=int, default=8, help="widths 1..N")
    p.add_argument("--chunk", type=int, default=512, help="seeds per fast chunk")
    p.add_argument("--engine", default="auto", choices=("auto", "c", "torch"))
    p.add_argument("--torch-seeds", type=int, default=2000, help="subset for the torch engine")
    p.add_argument("--torch-steps", type=int, default=100)
    p.add_argument("--vmap-seeds", type=int, default=2000, help="subset for vmap(grad)")
    p.add_argument("--vmap-steps", type=int, default=10)
    p.add_argument("--loop-seeds", type=int, default=2, help="subset for the per-seed loop")
    p.add_argument("--loop-steps", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--summary", type=Path, default=SUMMARY)
    args = p.parse_args(argv)
    load0, t_start = summary.load_average(), time.perf_counter()
    torch.set_num_threads(args.threads)
    widths = list(range(1, args.widths + 1))
    full = len(widths) * 4 * args.seeds * args.steps  # run-steps of the full sweep

    def go(seeds: int, steps: int, traced: bool, **kw) -> tuple[float, float, float, str]:
        cfg = NCnetConfig(steps=steps, dtype=args.dtype, trace_every=None if traced else (steps,))
        t, c, ds = _timed(lambda: run(cfg, widths, seeds, device=args.device, progress=False, **kw))
        scale = full / (len(widths) * 4 * seeds * steps)
        return t, t * scale, c * scale, ds.attrs["engine"]

    go(64, 5, False, engine=args.engine)  # warm-up: first calls, kernel build
    rows = []
    t, f, c, be = go(args.seeds, args.steps, True, chunk=args.chunk, engine=args.engine)
    rows.append((f"fast, engine {be}", f"{args.seeds} x {args.steps} (traced)", t, f, c))
    keys = ["fast_" + be]
    if be != "torch":
        t, f, c, _ = go(args.torch_seeds, args.torch_steps, False, chunk=args.chunk, engine="torch")
        rows.append(("fast, engine torch", f"{args.torch_seeds} x {args.torch_steps}", t, f, c))
        keys.append("fast_torch")
    t, f, c, _ = go(args.vmap_seeds, args.vmap_steps, False, engine="vmap")
    rows.append(("vmap(grad), torch.func", f"{args.vmap_seeds} x {args.vmap_steps}", t, f, c))
    keys.append("vmap")
    t, f, c, _ = go(args.loop_seeds, args.loop_steps, False, engine="loop")
    rows.append(("per-seed loop (autograd)", f"{args.loop_seeds} x {args.loop_steps}", t, f, c))
    keys.append("loop")
    loop_wall, loop_cpu = rows[-1][3], rows[-1][4]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"\nfull sweep = widths 1-{args.widths} x 4 setting pairs x {args.seeds} seeds x "
        f"{args.steps} steps ({args.dtype}, {args.device}, {args.threads} torch threads, "
        f"load average {load:.1f}); subsets scaled linearly"
    )
    print(
        f"{'method':<26} {'measured (seeds x steps)':<26} {'wall s':>8} {'full sweep s':>13} "
        f"{'vs loop':>8} {'full sweep CPU s':>17} {'vs loop':>8}"
    )
    for name, what, t, f, c in rows:
        print(
            f"{name:<26} {what:<26} {t:>8.2f} {f:>13.1f} {loop_wall / f:>7.0f}x "
            f"{c:>17.1f} {loop_cpu / c:>7.0f}x"
        )
    methods = {
        key: {
            "measured": what,
            "wall_s": t,
            "full_sweep_wall_s": f,
            "full_sweep_cpu_s": c,
            "speedup_wall": loop_wall / f,
            "speedup_cpu": loop_cpu / c,
        }
        for key, (_, what, t, f, c) in zip(keys, rows, strict=True)
    }
    summary.write(
        args.summary,
        {
            "full_sweep": {
                "widths": args.widths,
                "setting_pairs": 4,
                "seeds": args.seeds,
                "steps": args.steps,
            },
            "threads": args.threads,
            "device": args.device,
            "dtype": args.dtype,
            "methods": methods,
        },
        run_id=summary.new_run_id(),
        argv=["benchmarks/ensemble_throughput.py", *(sys.argv[1:] if argv is None else argv)],
        timings={"wall_s": time.perf_counter() - t_start},
        load_start=load0,
    )
    print(f"wrote {args.summary}")


if __name__ == "__main__":
    main()
