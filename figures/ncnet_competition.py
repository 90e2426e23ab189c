"""Figure: contested units and S across NCnet width; the task–unit graph at the critical width.

Reads ``results/ncnet_competition.nc`` (written by ``analyses/ncnet_competition.py``) and writes
``figures/ncnet_competition.png``::

    python figures/ncnet_competition.py [--data results/ncnet_competition.nc] [--out PNG]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import xarray as xr

from gradcomp.graph import competition_graph as build_graph
from gradcomp.plot.graph import competition_graph, contested_vs_width

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="results/ncnet_competition.nc")
    parser.add_argument("--out", default=str(HERE / "ncnet_competition.png"))
    parser.add_argument("--dpi", type=int, default=110)
    args = parser.parse_args(argv)
    plt.switch_backend("Agg")
    ds = xr.load_dataset(args.data, engine="h5netcdf")
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.4), constrained_layout=True)
    contested_vs_width(ds, axes[0])
    row = ds.sel(analysis="per_seed")
    within = ds.sel(analysis="per_seed_within_width")
    axes[0].set_title(
        "per seed: Spearman(contested, s_k) = "
        f"{float(row['corr_spearman']):.2f} [{float(row['corr_spearman_lo']):.2f}, "
        f"{float(row['corr_spearman_hi']):.2f}]; within width "
        f"{float(within['corr_spearman']):.2f}",
        fontsize="small",
    )
    gram = ds["critical_unit_gram"].rename(critical_unit="unit")
    min_share = ds.attrs.get("min_share")
    min_share = None if isinstance(min_share, str) else float(min_share)
    a = ds.attrs
    competition_graph(
        build_graph(gram, min_share=min_share),
        axes[1],
        title=f"critical width n = {a['critical_width']} (max S): seed {a['critical_seed']}, "
        f"settings ({a['critical_alice']}, {a['critical_bob']}), step {a['critical_step']}",
    )
    fig.suptitle("NCnet: hidden units the two heads fight over")
    fig.savefig(args.out, dpi=args.dpi)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
