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
import xarray as xr

from gradcomp import ncnet, summary
from gradcomp._dims import STEP, WIDTH
from gradcomp.ncnet import NCnetConfig
from gradcomp.ncnet._experiment import CONTROL_PREFIX, capacity, table

NAME = "ncnet_capacity"
SUMMARY = summary.ROOT / "analyses" / "summaries" / f"{NAME}.json"

#: per-width variables quoted in the docs (those the estimate provides are kept)
PER_WIDTH = (
    "S",
    "S_lo",
    "S_hi",
    "s_odd",
    "delta",
    "delta_lo",
    "delta_hi",
    "cbd_margin",
    "cbd_margin_lo",
    "cbd_margin_hi",
    "cbd_p_value",
    "signaling_p_value",
    "p_value",
    "remote_flip_fraction",
    "S_degenerate",
    "S_trivial",
    "n_excluded",
    "diverged_share",
    "n_seeds",
)


def values(ds: xr.Dataset) -> dict:
    """The summary's numbers: per width at the last step, for the main run and the control."""
    last = ds.isel({STEP: -1}) if STEP in ds.dims else ds
    out: dict = {"widths": last[WIDTH].values, "step": int(last[STEP]) if STEP in last else None}
    for prefix, key in (("", "shared"), (CONTROL_PREFIX, "unshared")):
        if prefix + "S" not in last:
            continue
        out[key] = {v: last[prefix + v].values for v in PER_WIDTH if prefix + v in last}
        out[key]["C"] = {
            f"{i}{j}": last[prefix + "C"].sel(alice=i, bob=j).values for i in (1, 2) for j in (1, 2)
        }
    return out


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
    ds = capacity(
        NCnetConfig(steps=steps),
        list(widths),
        seeds,
        n_boot=n_boot,
        device=args.device,
        chunk=512,
        progress=not args.tiny,
    )
    print(table(ds))
    run_id = summary.new_run_id()
    ds.attrs.update(summary.dataset_attrs(path, run_id))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    ncnet.save(ds, args.out)  # compact: int8 outcomes, gzip, cosine and grad_norm from gram
    wall = time.perf_counter() - t0
    summary.write(
        path,
        values(ds),
        run_id=run_id,
        argv=["analyses/ncnet_capacity.py", *(sys.argv[1:] if argv is None else argv)],
        timings={"wall_s": wall},
        load_start=load0,
    )
    print(f"wrote {args.out} and {path} ({wall:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
