"""Wall time of the main job, ``gradcomp ncnet`` with its defaults, as a user runs it.

Runs ``python -m gradcomp ncnet`` (widths 1-8, 500 seeds per setting pair, 2000 steps, with
the unshared control, the table and the figure) in a fresh process ``--repeats`` times,
writing into a temporary directory, and records the wall-clock seconds (interpreter start and
imports included), the size of the written file, the machine and its 1-minute load in
``benchmarks/summaries/ncnet_cli.json``.

    python benchmarks/ncnet_cli.py [--repeats 3] [--summary PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gradcomp import summary

SUMMARY = summary.ROOT / "benchmarks" / "summaries" / "ncnet_cli.json"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--summary", type=Path, default=SUMMARY)
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more CLI arguments")
    args = p.parse_args(argv)
    load0 = summary.load_average()
    walls = []
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.repeats):
            out, fig = Path(tmp) / f"n{k}.nc", Path(tmp) / f"n{k}.png"
            cmd = [sys.executable, "-m", "gradcomp", "ncnet", "--out", str(out)]
            cmd += ["--figure", str(fig), "--no-progress", *args.extra]
            t = time.perf_counter()
            subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
            walls.append(time.perf_counter() - t)
            size = out.stat().st_size
            print(f"run {k + 1}: {walls[-1]:.1f} s (load {summary.load_average()})")
    summary.write(
        args.summary,
        {
            "cli": "gradcomp ncnet " + " ".join(args.extra),
            "repeats": args.repeats,
            "file_mb": round(size / 1e6, 2),
        },
        run_id=summary.new_run_id(),
        argv=["benchmarks/ncnet_cli.py", *(sys.argv[1:] if argv is None else argv)],
        timings={"wall_s_median": statistics.median(walls), "wall_s_min": min(walls)},
        load_start=load0,
    )
    print(f"median {statistics.median(walls):.1f} s; wrote {args.summary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
