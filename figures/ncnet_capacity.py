"""Draw the NCnet capacity figure from a saved dataset (``analyses/ncnet_capacity.py``).

Writes ``figures/ncnet_capacity.png`` and ``.pdf``: (a) S against hidden width with its
interval, 2 + Δ, lines at 2 and 2√2, the unshared control; (b) the Contextuality-by-Default
margin with its interval; (c) the four correlators C_ij with their intervals. Trivial and
degenerate points are marked. The files are stamped with the sha256 of the run's summary.

    python figures/ncnet_capacity.py                       # reads results/ncnet_capacity.nc
    python figures/ncnet_capacity.py --data /tmp/tiny.nc --out /tmp/fig --tiny
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import xarray as xr

from gradcomp import summary
from gradcomp.plot.chsh import figure


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("results/ncnet_capacity.nc"))
    p.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).with_name("ncnet_capacity"),
        help="output path without suffix; .png and .pdf are written",
    )
    p.add_argument("--tiny", action="store_true", help="low resolution (for tests)")
    args = p.parse_args(argv)
    if not args.data.exists():
        raise SystemExit(f"{args.data} not found: run analyses/ncnet_capacity.py first")
    ds = xr.open_dataset(args.data, engine="h5netcdf")
    try:
        source = summary.source_of(ds)
    except ValueError as err:
        raise SystemExit(f"figures/ncnet_capacity.py: {err}") from None
    keep = [v for v in ds.data_vars if ds[v].ndim <= 2 or v.endswith(("C", "C_lo", "C_hi"))]
    keep += [v for v in ("alice_mean", "bob_mean") if v in ds]
    fig = figure(ds[keep].load())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    summary.savefig(fig, args.out.with_suffix(".png"), source, dpi=60 if args.tiny else 150)
    summary.savefig(fig, args.out.with_suffix(".pdf"), source)
    print(f"wrote {args.out.with_suffix('.png')} and .pdf")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
