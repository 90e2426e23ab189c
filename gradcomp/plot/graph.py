"""Plots for :mod:`gradcomp.graph`: min-cut bounds of ConvAC profiles, task–unit graphs.

Matplotlib only (no networkx drawing): every function takes ``(data, ax)`` and returns ``ax``.
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from gradcomp.dims import BLOCK, PROFILE, SEED, TASK, WIDTH

__all__ = ["competition_graph", "contested_vs_width", "convac_bounds"]

STATE_COLORS = {"contested": "tab:red", "shared": "tab:green", "owned": "0.35", "idle": "0.8"}
TASK_COLORS = ("tab:blue", "tab:orange", "tab:purple", "tab:brown")


def convac_bounds(ds: xr.Dataset, ax: Axes) -> Axes:
    """``log2`` min-cut bound against partition block size, one line per channel profile.

    Args:
        ds: from :func:`gradcomp.graph.design.design_bounds` (``bits``, optionally ``rank_bits``).
        ax: where to draw.
    """
    for k, profile in enumerate(ds[PROFILE].values):
        row = ds.sel(profile=profile)
        channels = tuple(int(c) for c in row["channels"].values)
        label = f"{profile} {channels}, {int(row['n_params'])} weights"
        color = TASK_COLORS[k % len(TASK_COLORS)]
        ax.plot(ds[BLOCK], row["bits"], "-o", color=color, label=label)
        if "rank_bits" in ds:
            ax.plot(ds[BLOCK], row["rank_bits"], "x", color="k", ms=9, mew=1.5)
    if "rank_bits" in ds:
        ax.plot([], [], "x", color="k", label="measured rank (random weights)")
    ax.set_xscale("log", base=2)
    ticks = ds[BLOCK].values
    ax.set_xticks(ticks, [f"{t}" for t in ticks])
    ax.set_xlabel("block size of the partition (1: interleaved … N/2: left/right)")
    ax.set_ylabel(r"$\log_2$ min-cut bound on rank $[\mathcal{A}]_{I,J}$ (bits)")
    ax.legend(fontsize="small")
    return ax


def competition_graph(g: nx.Graph, ax: Axes, title: str | None = None) -> Axes:
    """Draw a task–unit graph from :func:`gradcomp.graph.competition_graph`.

    Tasks sit on the top row, units on the bottom row sorted by state (owned by each task,
    contested, shared, idle); edge width is the task's share on the unit, red units are contested.
    """
    tasks = [n for n, d in g.nodes(data=True) if d.get("bipartite") == 0]
    units = [n for n, d in g.nodes(data=True) if d.get("bipartite") == 1]
    order = {t[1]: k for k, t in enumerate(tasks)}

    def rank(n):
        d = g.nodes[n]
        owner = order.get(d["owner"], len(tasks)) if d["state"] == "owned" else len(tasks)
        return (owner, ["owned", "contested", "shared", "idle"].index(d["state"]), str(n[1]))

    units.sort(key=rank)
    xs = np.linspace(0, 1, len(units)) if len(units) > 1 else [0.5]
    pos = {u: (x, 0.0) for u, x in zip(units, xs, strict=True)}
    pos.update(
        {t: (x, 1.0) for t, x in zip(tasks, np.linspace(0.15, 0.85, len(tasks)), strict=True)}
    )
    top = max((w for *_, w in g.edges(data="weight")), default=1.0) or 1.0
    for u, v, w in g.edges(data="weight"):
        task, unit = (u, v) if u in order or u[0] == TASK else (v, u)
        color = TASK_COLORS[order[task[1]] % len(TASK_COLORS)]
        (x0, y0), (x1, y1) = pos[task], pos[unit]
        ax.plot([x0, x1], [y0, y1], color=color, lw=0.5 + 5 * w / top, alpha=0.6, zorder=1)
    for u in units:
        ax.scatter(*pos[u], s=60, color=STATE_COLORS[g.nodes[u]["state"]], edgecolor="k", zorder=2)
    for k, t in enumerate(tasks):
        ax.scatter(*pos[t], s=300, marker="s", color=TASK_COLORS[k % len(TASK_COLORS)], zorder=3)
        ax.annotate(str(t[1]), pos[t], ha="center", va="center", color="w", weight="bold", zorder=4)
    present = {g.nodes[u]["state"] for u in units}
    handles = [
        Line2D([], [], marker="o", ls="", color=c, mec="k", label=s)
        for s, c in STATE_COLORS.items()
        if s in present
    ]
    handles.append(
        Line2D(
            [],
            [],
            color="0.4",
            lw=3,
            label="edge width: task's\nshare of its\n|gradient|² on the unit",
        )
    )
    ax.legend(
        handles=handles,
        loc="center left",
        bbox_to_anchor=(1.0, 0.5),
        fontsize="small",
        title="hidden unit",
    )
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.2, 1.2)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize="medium")
    return ax


def contested_vs_width(ds: xr.Dataset, ax: Axes) -> Axes:
    """Contested hidden units (mean over seeds ± s.e.) against hidden width.

    Args:
        ds: with ``contested_mean (width, seed)``, as written by ``analyses/ncnet_competition.py``.
        ax: where to draw (S goes on its own panel: :func:`gradcomp.plot.chsh.capacity`).
    """
    widths = ds[WIDTH].values
    per_seed = ds["contested_mean"]
    mean = per_seed.mean(SEED)
    se = per_seed.std(SEED, ddof=1) / np.sqrt(per_seed.sizes[SEED])
    ax.errorbar(
        widths, mean, yerr=se, fmt="-o", color="tab:red", capsize=3, label="mean ± s.e. over seeds"
    )
    ax.plot(widths, widths, ":", color="0.5", label="all units (= width)")
    ax.set_xlabel("hidden width n (units)")
    ax.set_ylabel("contested hidden units (count; mean over\nsetting pairs and traced steps)")
    ax.set_xticks(widths)
    ax.set_ylim(0, None)
    ax.legend(loc="upper left", fontsize="small")
    return ax
