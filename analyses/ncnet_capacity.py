"""Produce the NCnet capacity dataset: S across hidden width, with the unshared control.

Full size (the committed figure): widths 1–8, 2000 seeds per setting pair, 2000 steps, the
default task family; writes ``results/ncnet_capacity.nc``. ``--tiny`` runs a few seconds' worth.

    python analyses/ncnet_capacity.py            # full size (minutes on a 2-core CPU)
    python analyses/ncnet_capacity.py --tiny --out /tmp/tiny.nc
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from gradcomp.ncnet import NCnetConfig
from gradcomp.ncnet._experiment import capacity, table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="widths 1-3, 16 seeds, 100 steps")
    p.add_argument("--seeds", type=int, default=2000)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--max-width", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=Path("results/ncnet_capacity.nc"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds, steps, widths, n_boot = args.seeds, args.steps, range(1, args.max_width + 1), 2000
    if args.tiny:
        seeds, steps, widths, n_boot = 16, 100, range(1, 4), 200
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # the per-step Gram traces are large at full size: compress them
    enc = {
        v: {"compression": "gzip", "compression_opts": 4} for v in ds.data_vars if ds[v].ndim >= 5
    }
    ds.to_netcdf(args.out, engine="h5netcdf", encoding=enc)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
