"""Plots of the LoRA-rank summary (``gradcomp.lora.summary.summarize``): each ``(data, ax) -> ax``.

The S panel shows S = C11 + C12 + C21 − C22 (the fixed sign placement of DESIGN.md, not s_odd)
with its interval, the classical bound 2, the signaling-corrected bound 2 + delta per rank
(Contextuality-by-Default, Kujala, Dzhafarov & Larsson, PRL 2015) and Tsirelson's 2√2.
"""

from __future__ import annotations

import matplotlib
import numpy as np
import xarray as xr
from matplotlib.axes import Axes

from gradcomp.dims import ADAPTERS, DELTA, HI, LO, RANK, STEP, S

__all__ = ["conflict_vs_rank", "s_over_training", "s_vs_generalization", "s_vs_rank"]


def _at(summary: xr.Dataset, step: int | None) -> xr.Dataset:
    if STEP not in summary.dims:
        return summary
    return summary.isel({STEP: -1}) if step is None else summary.sel({STEP: step})


def s_vs_rank(summary: xr.Dataset, ax: Axes, step: int | None = None) -> Axes:
    """S against LoRA rank with its interval, and the 2, 2 + delta and 2√2 lines.

    Args:
        summary: Dataset with ``S``, ``S_lo``, ``S_hi`` and ``delta`` over ``rank`` (and ``step``).
        ax: the axes to draw on.
        step: which recorded step (default: the last, i.e. the end of training).
    """
    d = _at(summary, step)
    rank = d[RANK].values
    control = ADAPTERS in d.dims
    for name, fmt in (("shared", "o-"), ("separate", "s:")) if control else ((None, "o-"),):
        c = d.sel({ADAPTERS: name}) if name else d
        s = c[S].values
        err = np.vstack([s - c[S + LO].values, c[S + HI].values - s])
        label = f"S, {name} adapters (95% interval)" if name else "S (95% interval)"
        ax.errorbar(
            rank,
            s,
            yerr=err,
            fmt=fmt,
            capsize=3,
            label=label,
            alpha=1 if name != "separate" else 0.7,
        )
    shared = d.sel({ADAPTERS: "shared"}) if control else d
    ax.axhline(2.0, color="k", lw=1, label="2 (classical)")
    ax.plot(rank, 2.0 + shared[DELTA].values, "k--", lw=1, label="2 + Δ (signaling, shared)")
    ax.axhline(2 * np.sqrt(2), color="0.6", lw=1, ls=":", label="2√2 (Tsirelson)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(rank, [str(r) for r in rank])
    ax.set_xlabel("LoRA rank")
    ax.set_ylabel("S")
    ax.legend(fontsize="small", loc="upper left")
    return ax


def conflict_vs_rank(summary: xr.Dataset, ax: Axes, step: int | None = None) -> Axes:
    """Mean A–B gradient cosine (over training and at ``step``) and conflict frequency vs rank."""
    rank = summary[RANK].values
    mean_cos = summary["conflict_cosine"].mean(STEP) if STEP in summary.dims else None
    d = _at(summary, step)
    if mean_cos is not None:
        ax.plot(rank, mean_cos.values, "o-", label="cosine, mean over training")
    ax.plot(rank, d["conflict_cosine"].values, "s--", label="cosine, end of training")
    ax.plot(rank, d["conflict_frequency"].values, "^:", label="share of runs in conflict")
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(rank, [str(r) for r in rank])
    ax.set_xlabel("LoRA rank")
    ax.set_ylabel("A–B gradient cosine / share in conflict")
    ax.legend(fontsize="small")
    return ax


def s_vs_generalization(summary: xr.Dataset, ax: Axes) -> Axes:
    """S against held-out accuracy, one point per (rank, recorded step), coloured by rank."""
    ranks = summary[RANK].values
    colors = matplotlib.colormaps["viridis"](np.linspace(0, 0.9, len(ranks)))
    if ADAPTERS in summary.dims:
        summary = summary.sel({ADAPTERS: "shared"})
    for r, c in zip(ranks, colors, strict=True):
        d = summary.sel({RANK: r})
        ax.plot(d["generalization"].values, d[S].values, "o", color=c, ms=4, label=f"rank {r}")
    ax.axhline(2.0, color="k", lw=1)
    title = "S vs generalization"
    if "r_S_generalization" in summary:
        r = float(summary["r_S_generalization"])
        lo, hi = float(summary["r_S_generalization_lo"]), float(summary["r_S_generalization_hi"])
        title += f"\nwithin-rank r = {r:.2f} [{lo:.2f}, {hi:.2f}]"
    ax.set_title(title, fontsize="medium")
    ax.set_xlabel("held-out accuracy")
    ax.set_ylabel("S")
    ax.legend(fontsize="small", ncol=2)
    return ax


def s_over_training(summary: xr.Dataset, ax: Axes) -> Axes:
    """S at every recorded step, one line per rank (shared adapters), with the 2 line."""
    if ADAPTERS in summary.dims:
        summary = summary.sel({ADAPTERS: "shared"})
    ranks = summary[RANK].values
    colors = matplotlib.colormaps["viridis"](np.linspace(0, 0.9, len(ranks)))
    steps = summary[STEP].values
    for r, c in zip(ranks, colors, strict=True):
        d = summary.sel({RANK: r})
        ax.plot(steps, d[S].values, "o-", color=c, ms=3, label=f"rank {r}")
        ax.fill_between(steps, d[S + LO].values, d[S + HI].values, color=c, alpha=0.12)
    ax.axhline(2.0, color="k", lw=1)
    ax.set_xlabel("training step")
    ax.set_ylabel("S (shared adapters)")
    ax.legend(fontsize="small", ncol=2)
    return ax
