"""Figure: S vs LoRA rank (shared and separate adapters, 2 / 2 + delta), S over training,
conflict vs rank, S vs generalization.

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
from gradcomp.plot.lora import conflict_vs_rank, s_over_training, s_vs_generalization, s_vs_rank

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
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.4), constrained_layout=True)
    s_vs_rank(summary, axes[0])
    axes[0].set_title("S at the end of training", fontsize="medium")
    s_over_training(summary, axes[1])
    axes[1].set_title("S over training (95% intervals shaded)", fontsize="medium")
    conflict_vs_rank(summary, axes[2])
    axes[2].set_title("gradient conflict on the shared LoRA parameters", fontsize="medium")
    s_vs_generalization(summary, axes[3])
    n = summary["n_seeds"]
    if "adapters" in n.dims:
        shared, control = (int(n.sel(adapters=a).max()) for a in ("shared", "separate"))
        seeds = f"{shared} seeds (control: {control})"
    else:
        seeds = f"{int(n.max())} seeds"
    rule = summary.attrs.get("outcome_rule", "")
    fig.suptitle(
        f"MiniLM + LoRA on wordfreq words, {seeds} per setting pair; outcome {rule}",
        fontsize="medium",
    )
    if args.stamp:
        gsummary.savefig(fig, args.out, args.stamp, dpi=args.dpi)
    else:
        fig.savefig(args.out, dpi=args.dpi)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
