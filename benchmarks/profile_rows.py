"""torch.profiler tables of one plain step against one ``strategy="rows"`` step.

Uses the models of :mod:`record_overhead` (BERT-style encoder, tasks on disjoint rows, one CPU
thread) and writes ``benchmarks/profiles/{model}_T{T}_{plain,rows}{suffix}.txt`` (the
``self_cpu_time_total`` table, 25 rows).

Run: ``python benchmarks/profile_rows.py [--models d64 d256] [--tasks 8] [--suffix _before]``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))
import record_overhead as ro

OUT = Path(__file__).parent / "profiles"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["d64", "d256"], choices=list(ro.MODELS))
    ap.add_argument("--tasks", type=int, nargs="+", default=[8])
    ap.add_argument("--steps", type=int, default=3, help="profiled steps of each kind")
    ap.add_argument("--suffix", default="")
    args = ap.parse_args()
    torch.set_num_threads(1)
    OUT.mkdir(exist_ok=True)
    for model in args.models:
        for t in args.tasks:
            with contextlib.ExitStack() as stack:
                fns = {
                    "plain": ro.make_plain(ro.build("cpu", model, t)),
                    "rows": ro.make_recorded(ro.build("cpu", model, t), "rows", 1, stack),
                }
                for name, fn in fns.items():
                    for _ in range(3):  # warm-up (and the first step's rows= check)
                        fn()
                    with profile(activities=[ProfilerActivity.CPU]) as prof:
                        for _ in range(args.steps):
                            fn()
                    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
                    path = OUT / f"{model}_T{t}_{name}{args.suffix}.txt"
                    head = f"{model} T={t} {name}: {args.steps} steps, 1 thread\n"
                    path.write_text(head + table + "\n")
                    print(head + "\n".join(table.splitlines()[:14]))


if __name__ == "__main__":
    main()
