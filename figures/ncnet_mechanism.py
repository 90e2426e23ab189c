"""Draw the NCnet mechanism figures from ``results/ncnet_mechanism.nc`` (saved data only).

Main figure (``ncnet_mechanism.pdf/.png``, four panels): (a) S over training at the critical
and the comfortable width and in the unshared control; (b) the share of runs whose A/B
gradients on the shared layer conflict; (c) decoding accuracy of the remote setting from each
head's own loss at the critical width, per own setting, with the control that has independent
initialisations per setting pair; (d) the Welch high-frequency share of the loss against the
learning rate.

Supplementary figure 1 (``ncnet_mechanism_supp1.png``): swing amplitude over training, the
lagged correlation of conflict and S, per-unit competition, sensing at every width and from the
oscillation amplitude, and the correlation table with q-values. Supplementary figure 2
(``ncnet_mechanism_supp2.png``): the learning-rate sweep (detrended RMS, reversing
blocks, sensing from oscillation features, S, detrended RMS over training).

Usage::

    python figures/ncnet_mechanism.py [--data results/ncnet_mechanism.nc]
        [--out figures/ncnet_mechanism.pdf]   # also the .png and the _supp1/_supp2 .png beside it
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import xarray as xr

from gradcomp import summary
from gradcomp.dims import WIDTH
from gradcomp.plot import mechanism as pm


def _title(ax, letter: str, title: str) -> None:
    ax.set_title(f"({letter})", loc="left", fontsize=10, fontweight="bold")
    ax.set_title(title, loc="right", fontsize=8)


def _nodes(tree: xr.DataTree) -> dict[str, xr.Dataset]:
    return {k: tree[k].to_dataset() for k in tree.children}


def draw(tree: xr.DataTree) -> plt.Figure:
    """The main figure: 2 x 2 panels."""
    crit = int(tree.attrs["critical_width"])
    comfy = int(tree.attrs["comfortable_width"])
    pair = sorted({crit, comfy})
    node = _nodes(tree)
    fig, axes = plt.subplots(2, 2, figsize=(9, 7), layout="constrained")
    a, b, c, d = axes.ravel()
    pm.s_over_training(node["traces"], a, pair, control=node["control_traces"])
    pm.conflict_over_training(node["traces"], b, pair)
    pm.sensing_by_own_setting(
        node["sensing_loss"], c, crit, control=node["independent_sensing_loss"]
    )
    pm.lr_panel(node["lr_sweep"], d, "hf_share")
    d.set_ylabel("Welch share of loss power above Nyquist / 2")
    for ax, letter, title in zip(
        axes.ravel(),
        "abcd",
        [
            "S over training",
            "A/B gradient conflict, shared layer",
            f"sensing the remote setting, n = {crit}",
            "loss oscillation across learning rates (spectrum)",
        ],
        strict=True,
    ):
        _title(ax, letter, title)
        ax.legend(fontsize=7, frameon=False)
    fig.suptitle(
        f"NCnet mechanism: {tree.attrs['seeds']} estimation seeds; critical width {crit} "
        f"chosen on seeds {tree.attrs.get('selection_seeds', '?')}",
        fontsize=10,
    )
    return fig


def draw_supp1(tree: xr.DataTree) -> plt.Figure:
    """Supplementary: oscillation over training, lags, units, sensing per width, correlations."""
    crit = int(tree.attrs["critical_width"])
    comfy = int(tree.attrs["comfortable_width"])
    pair = sorted({crit, comfy})
    node = _nodes(tree)
    window = int(node["lr_sweep"].attrs.get("osc_window", 0)) or None
    fig, axes = plt.subplots(2, 3, figsize=(15, 8), layout="constrained")
    a, b, c, d, e, f = axes.ravel()
    pm.oscillation_over_training(node["traces"], a, pair, window=window)
    pm.lagged_panel(node["lagged"], b, pair)
    if node["units"].data_vars:
        pm.unit_map(node["units"], c, crit)
    widths = [int(w) for w in node["sensing_loss"][WIDTH].values]
    pm.sensing_over_time(node["sensing_loss"], d, widths)
    pm.sensing_by_own_setting(
        node["sensing_oscillation"],
        e,
        crit,
        control=node["independent_sensing_oscillation"],
    )
    e.set_ylabel("decoding accuracy from the oscillation amplitude")
    pm.correlation_panel(node["correlation"], f)
    titles = [
        "own-loss swing amplitude (window centre)",
        "does conflict lead S?",
        f"per-unit competition, n = {crit}, settings (2, 2)",
        "sensing from own loss, every width",
        f"sensing from oscillation amplitude, n = {crit}",
        "correlations (BH q over rows)",
    ]
    for ax, letter, title in zip(axes.ravel(), "abcdef", titles, strict=True):
        _title(ax, letter, title)
    for ax in (a, b, e):
        ax.legend(fontsize=7, frameon=False)
    fig.suptitle("NCnet mechanism, supplementary 1", fontsize=10)
    return fig


def draw_supp2(tree: xr.DataTree) -> plt.Figure:
    """Supplementary: oscillation, sensing and S across learning rates."""
    crit = int(tree.attrs["critical_width"])
    node = _nodes(tree)
    sw = node["lr_sweep"]
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5), layout="constrained")
    a, b, c, d, e, f = axes.ravel()
    pm.lr_panel(sw, a, "osc_detrended", log=True)
    a.set_ylabel("RMS of the linearly detrended loss (block mean)")
    pm.lr_panel(sw, b, "reversing_share")
    b.set_ylabel("share of blocks with ≥ 2 reversals")
    pm.lr_panel(sw, c, "sense_max", feature="osc_amplitude", suffix=", amplitude")
    c.set_ylabel("best decoding accuracy (any window)")
    pm.lr_panel(sw, c, "sense_max", feature="loss_highpass", style="s--", suffix=", high-passed")
    c.axhline(0.5, color="k", lw=0.8)
    pm.lr_panel(sw, d, "sense_significant", feature="osc_amplitude")
    d.set_ylabel("windows with q < 0.05 (oscillation amplitude)")
    pm.lr_panel(sw, e, "S")
    e.axhline(2, color="k", lw=0.8)
    e.set_ylabel("CHSH S at the last step (95% CI)")
    pm.lr_blocks_panel(node["lr_blocks"], f, crit)
    f.set_yscale("log")
    f.set_ylabel(f"RMS of the detrended loss, n = {crit}")
    titles = [
        "detrended loss RMS (includes trend curvature)",
        "reversing blocks",
        "sensing from oscillation (o) / high-passed loss (s)",
        "significant oscillation windows (BH)",
        "S across learning rates",
        "detrended RMS over training",
    ]
    for ax, letter, title in zip(axes.ravel(), "abcdef", titles, strict=True):
        _title(ax, letter, title)
        ax.legend(fontsize=7, frameon=False)
    fig.suptitle(
        "NCnet mechanism, supplementary 2: full-batch loss oscillation across learning rates",
        fontsize=10,
    )
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="results/ncnet_mechanism.nc")
    parser.add_argument("--out", default="figures/ncnet_mechanism.pdf")
    args = parser.parse_args(argv)
    tree = xr.open_datatree(args.data, engine="h5netcdf")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    source = summary.source_of(tree.attrs)
    fig = draw(tree)
    summary.savefig(fig, out.with_suffix(".pdf"), source)
    summary.savefig(fig, out.with_suffix(".png"), source, dpi=110)
    plt.close(fig)
    written = [out.with_suffix(".pdf"), out.with_suffix(".png")]
    for i, drawer in enumerate((draw_supp1, draw_supp2), 1):
        path = out.with_name(f"{out.stem}_supp{i}.png")
        fig = drawer(tree)
        summary.savefig(fig, path, source, dpi=100)
        plt.close(fig)
        written.append(path)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
