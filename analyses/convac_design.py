"""Min-cut bounds of "wide-base" vs "wide-tip" ConvACs at (about) equal parameter count.

Levine, Yakira, Cohen, Shashua (arXiv 1704.01552): early-layer widths control short-range
correlations, deep-layer widths long-range ones. Writes two Datasets (``--out`` directory):

* ``convac_design.nc``: N = 16 inputs, M = 8, bounds only;
* ``convac_design_tiny.nc``: N = 8, M = 4, bounds and the measured rank of random Gaussian nets.

Usage::

    python analyses/convac_design.py [--out results] [--tiny]

``figures/convac_design.py`` draws the figure from them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gradcomp.graph.design import design_bounds

#: channel profiles (r_0, …, r_{L-1}); powers of 2 like M, so the bounds are attained.
FULL = {"wide base": (16, 16, 16, 2), "wide tip": (4, 16, 32, 32)}  # 5186 vs 5152 weights
TINY = {"wide base": (8, 4, 2), "wide tip": (2, 8, 16)}  # 402 vs 400 weights


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results", help="directory for the .nc files")
    parser.add_argument("--tiny", action="store_true", help="smallest nets (a test runs this)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the measured random nets")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        full = design_bounds({"wide base": (4, 2), "wide tip": (2, 4)}, 4, 4)
        tiny = design_bounds(
            {"wide base": (4, 2), "wide tip": (2, 4)}, 4, 4, measure_seed=args.seed
        )
    else:
        full = design_bounds(FULL, 16, 8)
        tiny = design_bounds(TINY, 8, 4, measure_seed=args.seed)
    for name, ds in (("convac_design.nc", full), ("convac_design_tiny.nc", tiny)):
        ds.to_netcdf(out / name, engine="h5netcdf")
        print(f"wrote {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
