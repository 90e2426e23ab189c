"""Figure: S vs LoRA rank (with 2 / 2 + delta), conflict vs rank, S vs generalization.

Reads ``results/lora_rank_summary.nc`` (written by ``analyses/lora_rank.py`` or ``gradcomp lora``)
and writes ``figures/lora_rank.png``::

    python figures/lora_rank.py [--summary results/lora_rank_summary.nc] [--out PNG]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import xarray as xr

from gradcomp import summary as gsummary
from gradcomp.plot.lora import conflict_vs_rank, s_vs_generalization, s_vs_rank

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--summary", default="results/lora_rank_summary.nc")
    parser.add_argument("--out", default=str(HERE / "lora_rank.png"))
    parser.add_argument(
        "--stamp",
        default="analyses/summaries/lora_rank.json",
        help="the committed summary of the same run, stamped into the figure ('' for none)",
    )
    parser.add_argument("--dpi", type=int, default=110)
    args = parser.parse_args(argv)
    plt.switch_backend("Agg")
    summary = xr.open_dataset(args.summary, engine="h5netcdf").load()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), constrained_layout=True)
    s_vs_rank(summary, axes[0])
    axes[0].set_title("S at the end of training", fontsize="medium")
    conflict_vs_rank(summary, axes[1])
    axes[1].set_title("gradient conflict on the LoRA parameters", fontsize="medium")
    s_vs_generalization(summary, axes[2])
    seeds = int(summary["n_seeds"].max()) if "n_seeds" in summary else "?"
    rule = summary.attrs.get("outcome_rule", "")
    fig.suptitle(f"MiniLM + LoRA on wordfreq words: {seeds} seeds per setting pair; outcome {rule}")
    if args.stamp:
        gsummary.savefig(fig, args.out, args.stamp, dpi=args.dpi)
    else:
        fig.savefig(args.out, dpi=args.dpi)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
