"""Draw the NCnet mechanism figure from ``results/ncnet_mechanism.nc`` (saved data only).

Panels: (a) S over training at the critical and a comfortable width and in the unshared
control; (b) the share of runs whose A/B gradients on the shared layer conflict; (c) the loss
oscillation amplitude; (d) lagged correlation of conflict and S changes; (e) per-unit competition
at the critical width, setting pair (2, 2); (f) decoding accuracy of the remote setting from each
head's own loss per width (and from its oscillation amplitude, and in the control); (g) the
correlation table with intervals.

Usage::

    python figures/ncnet_mechanism.py [--data results/ncnet_mechanism.nc]
        [--out figures/ncnet_mechanism.pdf]        # also writes the .png beside it
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import xarray as xr

from gradcomp._dims import WIDTH
from gradcomp.plot import mechanism as pm


def draw(tree: xr.DataTree) -> plt.Figure:
    """The 2 x 4 mechanism figure."""
    crit = int(tree.attrs["critical_width"])
    comfy = int(tree.attrs["comfortable_width"])
    pair = sorted({crit, comfy})
    node = {k: tree[k].to_dataset() for k in tree.children}
    fig, axes = plt.subplots(2, 4, figsize=(16, 7.2), layout="constrained")
    a, b, c, d, e, f, g, h = axes.ravel()
    pm.s_over_training(node["traces"], a, pair, control=node["control_traces"])
    pm.conflict_over_training(node["traces"], b, pair, control=node["control_traces"])
    pm.oscillation_over_training(node["traces"], c, pair)
    pm.lagged_panel(node["lagged"], d, pair)
    if node["units"].data_vars:
        pm.unit_map(node["units"], e, crit)
    widths = [int(w) for w in node["sensing_loss"][WIDTH].values]
    pm.sensing_over_time(
        node["sensing_loss"],
        f,
        widths,
        control=node["control_sensing_loss"],
        oscillation=node["sensing_oscillation"],
        oscillation_width=crit,
    )
    pm.correlation_panel(node["correlation"], g)
    h.axis("off")
    h.text(0, 1, _caption(tree, node), va="top", fontsize=8, family="monospace", wrap=True)
    titles = [
        "S over training",
        "A/B gradient conflict, shared layer",
        "own-loss oscillation",
        "does conflict lead S?",
        f"per-unit competition, n = {crit}, settings (2, 2)",
        "sensing the remote setting",
        "correlations",
    ]
    for ax, letter, title in zip(axes.ravel()[:7], "abcdefg", titles, strict=True):
        ax.set_title(f"({letter})", loc="left", fontsize=10, fontweight="bold")
        ax.set_title(title, loc="right", fontsize=8)
    for ax in (a, b, d):
        ax.legend(fontsize=7, frameon=False)
    fig.suptitle(
        f"NCnet mechanism: {tree.attrs['seeds']} seeds per width, critical width {crit}, "
        f"comfortable width {comfy}; unshared control at width {crit}",
        fontsize=11,
    )
    return fig


def _caption(tree: xr.DataTree, node: dict[str, xr.Dataset]) -> str:
    crit = int(tree.attrs["critical_width"])
    tr = node["traces"].sel({WIDTH: crit}).isel(step=-1)
    lag = node["lagged"].sel({WIDTH: crit})
    part = node["correlation"].sel(analysis="S~heldout within width")
    sense = node["sensing_loss"].sel({WIDTH: crit})
    ctrl = node["control_sensing_loss"]
    return "\n".join(
        [
            f"critical width n = {crit}, last step:",
            f"  S = {float(tr['S']):.2f} [{float(tr['S_lo']):.2f}, {float(tr['S_hi']):.2f}]",
            f"  signaling Δ = {float(tr['delta']):.2f}",
            f"  S - (2 + Δ) = {float(tr['cbd_margin']):.2f}",
            "sensing from own loss (max over time):",
            f"  shared  {float(sense['accuracy'].max()):.2f}",
            f"  onset   {_onset(sense)}",
            f"  control {float(ctrl['accuracy'].max()):.2f} (chance 0.5)",
            "conflict leads S? asymmetry",
            f"  {float(lag['lead_asymmetry']):+.2f} [{float(lag['lead_asymmetry_lo']):+.2f},"
            f" {float(lag['lead_asymmetry_hi']):+.2f}]",
            "S ~ held-out, width partialled out:",
            f"  r = {float(part['pearson']):+.2f} [{float(part['pearson_lo']):+.2f},"
            f" {float(part['pearson_hi']):+.2f}]",
            f"  n_eff = {float(part['n_eff']):.0f}",
        ]
    )


def _onset(sense: xr.Dataset) -> str:
    onset = sense["onset"].values.ravel()
    finite = onset[onset == onset]
    return f"step {int(finite.min())}" if finite.size else "none"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="results/ncnet_mechanism.nc")
    parser.add_argument("--out", default="figures/ncnet_mechanism.pdf")
    args = parser.parse_args(argv)
    tree = xr.open_datatree(args.data, engine="h5netcdf")
    fig = draw(tree)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out.with_suffix(".pdf"))
    fig.savefig(out.with_suffix(".png"), dpi=110)
    plt.close(fig)
    print(f"wrote {out.with_suffix('.pdf')} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
