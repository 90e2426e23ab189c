"""The Gram of ``[T, P]`` float32 blocks: the compiled kernel of ``"rows"`` against torch's product.

For each T and P, times ``F @ F.T`` (torch, the naive baseline: one BLAS product) and
``gradcomp.recorder.rows.cgram.block_gram`` (the kernel where it applies) in the same run,
alternating, median of ``--reps`` calls each, and checks both against the float64 product
(printed: the largest relative error of each). The P values are the sizes of a BERT-style
encoder's weights: 64² and 64 · 256 (d = 64), 256² and 256 · 1024 (d = 256), 512 · 2048 (d = 512).

    python benchmarks/rows_gram.py [--threads 1] [--reps 200]

Writes ``benchmarks/summaries/rows_gram.json`` (``--no-save`` to skip).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from gradcomp import summary
from gradcomp.recorder.rows import cgram

SUMMARY = Path(__file__).parent / "summaries" / "rows_gram.json"
SIZES = (4096, 16384, 65536, 262144, 1048576)


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want).abs().max() / want.abs().max())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--reps", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if cgram.kernel() is None:
        print("the Gram kernel cannot be built here (no C compiler?): nothing to compare")
        return 1
    load0, t0 = summary.load_average(), time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    results: dict[str, dict[str, dict[str, float]]] = {}
    print(f"threads={args.threads}, median of {args.reps} calls; times in µs")
    head = ("T", "P", "torch", "kernel", "speed-up", "err torch", "err kernel")
    print("{:>3} {:>8} {:>9} {:>9} {:>9} {:>10} {:>10}".format(*head))
    for t in args.tasks:
        for size in SIZES:
            flat = torch.randn(t, size, generator=gen)
            want = flat.double() @ flat.double().T
            fns = {"torch": lambda f=flat: f @ f.T, "kernel": lambda f=flat: cgram.block_gram(f)}
            times: dict[str, list[float]] = {k: [] for k in fns}
            reps = max(5, args.reps * 4096 // size)
            for _ in range(3):  # warm-up
                for fn in fns.values():
                    fn()
            for _ in range(reps):
                for name, fn in fns.items():
                    start = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - start)
            med = {k: statistics.median(v) * 1e6 for k, v in times.items()}
            err = {k: _rel(fn(), want) for k, fn in fns.items()}
            used = t * t * size >= cgram.MIN_WORK
            results.setdefault(str(t), {})[str(size)] = {
                "torch_us": med["torch"],
                "kernel_us": med["kernel"],
                "speedup": med["torch"] / med["kernel"],
                "rel_err_torch": err["torch"],
                "rel_err_kernel": err["kernel"],
                "kernel_used": used,
            }
            print(
                f"{t:>3} {size:>8} {med['torch']:9.1f} {med['kernel']:9.1f} "
                f"{med['torch'] / med['kernel']:8.2f}x {err['torch']:10.1e} {err['kernel']:10.1e}"
                + ("" if used else "  (below MIN_WORK: block_gram is torch's product)")
            )
    if not args.no_save:
        summary.write(
            SUMMARY,
            {"threads": args.threads, "reps": args.reps, "results": results},
            run_id=summary.new_run_id(),
            argv=["benchmarks/rows_gram.py", *(sys.argv[1:] if argv is None else argv)],
            timings={"wall_s": time.perf_counter() - t0},
            load_start=load0,
        )
        print(f"wrote {SUMMARY}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
