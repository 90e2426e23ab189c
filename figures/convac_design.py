"""Figure: min-cut bounds of wide-base vs wide-tip ConvACs across partition range.

Reads ``results/convac_design.nc`` and ``results/convac_design_tiny.nc`` (written by
``analyses/convac_design.py``) and writes ``figures/convac_design.png``, stamped with the
sha256 of the run's summary::

    python figures/convac_design.py [--data results] [--out PNG]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import xarray as xr

from gradcomp import summary
from gradcomp.plot.graph import convac_bounds

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="results", help="directory with the .nc files")
    parser.add_argument("--out", default=str(HERE / "convac_design.png"))
    parser.add_argument("--dpi", type=int, default=110)
    args = parser.parse_args(argv)
    plt.switch_backend("Agg")
    data = Path(args.data)
    full = xr.load_dataset(data / "convac_design.nc", engine="h5netcdf")
    tiny = xr.load_dataset(data / "convac_design_tiny.nc", engine="h5netcdf")
    try:
        source = summary.source_of(full)
        summary.source_of(tiny)
    except ValueError as err:
        raise SystemExit(f"figures/convac_design.py: {err}") from None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), constrained_layout=True)
    for ax, ds in zip(axes, (full, tiny), strict=True):
        convac_bounds(ds, ax)
        ax.set_title(f"N = {ds.attrs['n_inputs']} inputs, M = {ds.attrs['m']}", fontsize="medium")
    fig.suptitle(
        "ConvAC min-cut bounds (Levine et al. 2018): wide base wins short-range partitions, "
        "wide tip long-range ones"
    )
    summary.savefig(fig, args.out, source, dpi=args.dpi)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
