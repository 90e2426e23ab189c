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
import time
from pathlib import Path

import xarray as xr

from gradcomp import summary
from gradcomp.graph.design import design_bounds

NAME = "convac_design"
SUMMARY = summary.ROOT / "analyses" / "summaries" / f"{NAME}.json"

#: channel profiles (r_0, …, r_{L-1}); powers of 2 like M, so the bounds are attained.
FULL = {"wide base": (16, 16, 16, 2), "wide tip": (4, 16, 32, 32)}  # 5186 vs 5152 weights
TINY = {"wide base": (8, 4, 2), "wide tip": (2, 8, 16)}  # 402 vs 400 weights


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results", help="directory for the .nc files")
    parser.add_argument("--tiny", action="store_true", help="smallest nets (a test runs this)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the measured random nets")
    parser.add_argument("--summary", type=Path, default=None, help=f"default {SUMMARY}")
    args = parser.parse_args(argv)
    load0, t0 = summary.load_average(), time.perf_counter()
    out = Path(args.out)
    path = args.summary or (out / f"{NAME}.json" if args.tiny else SUMMARY)
    out.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        full = design_bounds({"wide base": (4, 2), "wide tip": (2, 4)}, 4, 4)
        tiny = design_bounds(
            {"wide base": (4, 2), "wide tip": (2, 4)}, 4, 4, measure_seed=args.seed
        )
    else:
        full = design_bounds(FULL, 16, 8)
        tiny = design_bounds(TINY, 8, 4, measure_seed=args.seed)
    run_id = summary.new_run_id()
    for name, ds in (("convac_design.nc", full), ("convac_design_tiny.nc", tiny)):
        ds.attrs.update(summary.dataset_attrs(path, run_id))
        ds.to_netcdf(out / name, engine="h5netcdf")
        print(f"wrote {out / name}")
    summary.write(
        path,
        {"full": values(full), "tiny": values(tiny)},
        run_id=run_id,
        argv=["analyses/convac_design.py", *(sys.argv[1:] if argv is None else argv)],
        timings={"wall_s": time.perf_counter() - t0},
        load_start=load0,
    )
    print(f"wrote {path}")
    return 0


def values(ds: xr.Dataset) -> dict:
    """Per profile: channels, weight count, bound bits per block size (and measured rank bits)."""
    out: dict = {"n_inputs": int(ds.attrs["n_inputs"]), "m": int(ds.attrs["m"])}
    out["blocks"] = ds["block"].values
    for profile in ds["profile"].values:
        row = ds.sel(profile=profile)
        out[str(profile)] = {
            "channels": [int(c) for c in row["channels"].values],
            "n_params": int(row["n_params"]),
            "bits": row["bits"].values,
            **({"rank_bits": row["rank_bits"].values} if "rank_bits" in ds else {}),
        }
    return out


if __name__ == "__main__":
    sys.exit(main())
