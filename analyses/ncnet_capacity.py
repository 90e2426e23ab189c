"""Produce the NCnet capacity dataset: S across hidden width, with the unshared control.

Full size (the committed figure): widths 1–8, 2000 seeds per setting pair (seeds 0–1999; the
family screen uses seeds from 10,000), 2000 steps, the default task family; writes
``results/ncnet_capacity.nc`` and the committed summary
``analyses/summaries/ncnet_capacity.json``. ``--tiny`` runs a few seconds' worth.

    python analyses/ncnet_capacity.py            # full size (minutes on a 2-core CPU)
    python analyses/ncnet_capacity.py --tiny --out /tmp/tiny.nc
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from gradcomp import ncnet, summary
from gradcomp.ncnet import NCnetConfig

NAME = "ncnet_capacity"
SUMMARY = summary.ROOT / "analyses" / "summaries" / f"{NAME}.json"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="widths 1-3, 16 seeds, 100 steps")
    p.add_argument("--seeds", type=int, default=2000)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--max-width", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=Path("results/ncnet_capacity.nc"))
    p.add_argument("--summary", type=Path, default=None, help=f"default {SUMMARY}")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    load0, t0 = summary.load_average(), time.perf_counter()
    seeds, steps, widths, n_boot = args.seeds, args.steps, range(1, args.max_width + 1), 2000
    if args.tiny:
        seeds, steps, widths, n_boot = 16, 100, range(1, 4), 200
    path = args.summary or (args.out.with_suffix(".json") if args.tiny else SUMMARY)
    result = ncnet.capacity_run(
        NCnetConfig(steps=steps),
        list(widths),
        seeds,
        n_boot=n_boot,
        device=args.device,
        chunk=512,
        progress=not args.tiny,
    )
    ds = result.dataset
    print(result.table)
    run_id = summary.new_run_id()
    ds.attrs.update(summary.dataset_attrs(path, run_id))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    ncnet.save(ds, args.out)  # compact: int8 outcomes, gzip, cosine and grad_norm from gram
    wall = time.perf_counter() - t0
    summary.write(
        path,
        result.values(),
        run_id=run_id,
        argv=["analyses/ncnet_capacity.py", *(sys.argv[1:] if argv is None else argv)],
        timings={"wall_s": wall},
        load_start=load0,
    )
    print(f"wrote {args.out} and {path} ({wall:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
