"""Figure: contested units and S across NCnet width; the task–unit graph at the critical width.

Reads ``results/ncnet_competition.nc`` (written by ``analyses/ncnet_competition.py``) and writes
``figures/ncnet_competition.png``, stamped with the sha256 of the run's summary::

    python figures/ncnet_competition.py [--data results/ncnet_competition.nc] [--out PNG]

Panels: (a) contested hidden units against width; (b) S against width with its interval and
2 + Δ (separate axes: the two quantities have different units and no common zero); (c) the
task–unit graph of one slice at the critical width.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import xarray as xr

from gradcomp import summary
from gradcomp.graph import competition_graph as build_graph
from gradcomp.plot.chsh import capacity
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
    try:
        source = summary.source_of(ds)
    except ValueError as err:
        raise SystemExit(f"figures/ncnet_competition.py: {err}") from None
    fig, axes = plt.subplots(
        1, 3, figsize=(16, 4.6), layout="constrained", width_ratios=(1, 1, 1.3)
    )
    contested_vs_width(ds, axes[0])
    row = ds.sel(analysis="per_seed")
    within = ds.sel(analysis="per_seed_within_width")
    n = ds.sizes["seed"]
    axes[0].set_title(
        f"(a) contested units ({n} seeds)\nSpearman(contested, s_k) over (width, seed): "
        f"{float(row['corr_spearman']):.2f} [{float(row['corr_spearman_lo']):.2f}, "
        f"{float(row['corr_spearman_hi']):.2f}]\nwithin width: "
        f"{float(within['corr_spearman']):.2f} [{float(within['corr_spearman_lo']):.2f}, "
        f"{float(within['corr_spearman_hi']):.2f}]",
        fontsize="small",
        loc="left",
    )
    capacity(ds, axes[1], control_prefix=None)
    axes[1].set_title(f"(b) CHSH S, same runs ({n} seeds)", fontsize="small", loc="left")
    gram = ds["critical_unit_gram"].rename(critical_unit="unit")
    min_share = ds.attrs.get("min_share")
    min_share = None if isinstance(min_share, str) else float(min_share)
    a = ds.attrs
    competition_graph(
        build_graph(gram, min_share=min_share),
        axes[2],
        title=f"(c) task–unit graph at the critical width n = {a['critical_width']} (max S):\n"
        f"seed {a['critical_seed']} (most contested units at the end), settings "
        f"({a['critical_alice']}, {a['critical_bob']}),\nat training step {a['critical_step']}, "
        "the traced step where this seed has the most contested units",
    )
    axes[2].title.set_fontsize("small")
    fig.suptitle("NCnet: hidden units the two heads fight over")
    summary.savefig(fig, args.out, source, dpi=args.dpi)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
