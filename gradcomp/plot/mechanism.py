"""Plots of the mechanism analyses: S beside conflict, oscillation, sensing and correlations.

Each function takes ``(data, ax)`` (plus keyword options) and returns ``ax``; the data are the
nodes written by ``analyses/ncnet_mechanism.py`` (see there for what each holds).
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from matplotlib.axes import Axes

from gradcomp._dims import ALICE, BOB, STEP, TASK, UNIT, WIDTH

__all__ = [
    "conflict_over_training",
    "correlation_panel",
    "lagged_panel",
    "oscillation_over_training",
    "s_over_training",
    "sensing_over_time",
    "unit_map",
]

CONTROL_STYLE = {"color": "0.45", "linestyle": "--"}


def _colors(widths: Sequence[int]) -> dict[int, tuple]:
    cmap = plt.get_cmap("viridis")
    n = max(len(widths) - 1, 1)
    return {int(w): cmap(0.85 * i / n) for i, w in enumerate(widths)}


def _band(ax: Axes, x, mid, lo, hi, label: str, **style) -> None:
    (line,) = ax.plot(x, mid, label=label, lw=1.4, **style)
    ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, lw=0)


def _time_axis(ax: Axes, label: str = "training step") -> None:
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlim(left=0)
    ax.set_xlabel(label)


def _series(data: xr.Dataset, name: str, widths: Sequence[int], ax: Axes, control=None) -> None:
    colors = _colors(list(data[WIDTH].values))
    for w in widths:
        d = data.sel({WIDTH: w})
        if TASK in d[name].dims:
            d = d.mean(TASK)
        _band(ax, d[STEP], d[name], d[f"{name}_lo"], d[f"{name}_hi"], f"n = {w}", color=colors[w])
    if control is not None:
        c = control.mean(TASK) if TASK in control[name].dims else control
        _band(ax, c[STEP], c[name], c[f"{name}_lo"], c[f"{name}_hi"], "unshared", **CONTROL_STYLE)


def s_over_training(
    traces: xr.Dataset, ax: Axes, widths: Sequence[int], control: xr.Dataset | None = None
) -> Axes:
    """S(step) with its bootstrap interval per width; 2 and 2√2 for reference."""
    _series(traces, "S", widths, ax, control)
    ax.axhline(2, color="k", lw=0.8)
    ax.axhline(2 * np.sqrt(2), color="k", lw=0.8, ls=":")
    ax.text(0.5, 2.03, "classical bound 2", fontsize=7, va="bottom")
    ax.text(0.5, 2 * np.sqrt(2) + 0.03, "Tsirelson 2√2", fontsize=7, va="bottom")
    ax.set_ylabel("CHSH S (95% CI)")
    _time_axis(ax)
    return ax


def conflict_over_training(
    traces: xr.Dataset, ax: Axes, widths: Sequence[int], control: xr.Dataset | None = None
) -> Axes:
    """Share of runs whose A and B gradients on the shared layer conflict (cosine < 0)."""
    _series(traces, "conflict_share", widths, ax, control)
    ax.set_ylabel("gradient conflict share")
    ax.set_ylim(-0.02, 1.02)
    _time_axis(ax)
    return ax


def oscillation_over_training(traces: xr.Dataset, ax: Axes, widths: Sequence[int]) -> Axes:
    """Loss oscillation amplitude (seed mean, mean of the two heads) per width."""
    _series(traces, "osc_amplitude", widths, ax)
    ax.set_ylabel("loss oscillation amplitude")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    _time_axis(ax)
    return ax


def unit_map(units: xr.Dataset, ax: Axes, width: int, alice: int = 2, bob: int = 2) -> Axes:
    """Per-unit conflict frequency over training, units ranked within each run."""
    d = units["unit_conflict_frequency"].sel({WIDTH: width, ALICE: alice, BOB: bob})
    d = d.dropna(UNIT, how="all").dropna(STEP, how="all")
    steps = d[STEP].values
    edges = np.concatenate([[steps[0] - 0.5], (steps[1:] + steps[:-1]) / 2, [steps[-1] + 0.5]])
    ranks = np.arange(d.sizes[UNIT] + 1) - 0.5
    mesh = ax.pcolormesh(
        np.maximum(edges, 0.5),
        ranks,
        d.transpose(UNIT, STEP).values,
        vmin=0,
        vmax=1,
        cmap="magma",
        shading="flat",
        rasterized=True,
    )
    ax.set_xscale("log")
    ax.set_xlabel("training step")
    ax.set_yticks(range(d.sizes[UNIT]))
    ax.set_ylabel("unit rank (0 = most contested)")
    ax.figure.colorbar(mesh, ax=ax, label="share of steps pulled apart", pad=0.02)
    return ax


def _sense_mean(s: xr.Dataset) -> xr.Dataset:
    return s[["accuracy", "accuracy_lo", "accuracy_hi", "null_hi"]].mean((TASK, "own"))


def sensing_over_time(
    sensing: xr.Dataset,
    ax: Axes,
    widths: Sequence[int],
    control: xr.Dataset | None = None,
    oscillation: xr.Dataset | None = None,
    oscillation_width: int | None = None,
) -> Axes:
    """Decoding accuracy of the remote setting from a head's own loss, over training.

    Means over the two heads and their two own settings; chance is 0.5, the dotted line the
    permutation null's 95% quantile.
    """
    colors = _colors(list(sensing[WIDTH].values))
    for w in widths:
        d = _sense_mean(sensing.sel({WIDTH: w}))
        _band(
            ax,
            d[STEP],
            d["accuracy"],
            d["accuracy_lo"],
            d["accuracy_hi"],
            f"n = {w}",
            color=colors[w],
        )
    ref = _sense_mean(sensing).max(WIDTH)
    ax.plot(ref[STEP], ref["null_hi"], color="k", ls=":", lw=0.8, label="null 95%")
    if oscillation is not None and oscillation_width is not None:
        d = _sense_mean(oscillation.sel({WIDTH: oscillation_width}))
        _band(
            ax,
            d[STEP],
            d["accuracy"],
            d["accuracy_lo"],
            d["accuracy_hi"],
            f"n = {oscillation_width}, from oscillation",
            color=colors[oscillation_width],
            ls="-.",
        )
    if control is not None:
        d = _sense_mean(control)
        _band(
            ax,
            d[STEP],
            d["accuracy"],
            d["accuracy_lo"],
            d["accuracy_hi"],
            "unshared",
            **CONTROL_STYLE,
        )
    ax.axhline(0.5, color="k", lw=0.8)
    ax.set_ylim(0.2, 1.02)
    ax.legend(fontsize=6, frameon=False, loc="lower right", ncol=3)
    ax.set_ylabel("remote-setting decoding accuracy")
    ax.set_xlabel("training step (window end)")
    return ax


def lagged_panel(lag: xr.Dataset, ax: Axes, widths: Sequence[int]) -> Axes:
    """r(k) between Δ conflict share and Δ CHSH contribution; k > 0: conflict leads."""
    colors = _colors(list(lag[WIDTH].values))
    for w in widths:
        d = lag.sel({WIDTH: w})
        _band(ax, d["lag"], d["r"], d["r_lo"], d["r_hi"], f"n = {w}", color=colors[w])
    ax.axhline(0, color="k", lw=0.8)
    ax.axvline(0, color="k", lw=0.5, ls=":")
    ax.set_xlabel("lag k (steps; k > 0: conflict leads S)")
    ax.set_ylabel("corr(Δconflict_t, ΔS_{t+k})")
    return ax


def correlation_panel(corr: xr.Dataset, ax: Axes) -> Axes:
    """Pearson r with its bootstrap interval per analysis, labelled with n_eff."""
    names = [str(a) for a in corr["analysis"].values]
    y = np.arange(len(names))[::-1]
    r = corr["pearson"].values
    lo, hi = corr["pearson_lo"].values, corr["pearson_hi"].values
    ok = np.isfinite(lo) & np.isfinite(hi)
    ax.errorbar(
        r[ok], y[ok], xerr=[r[ok] - lo[ok], hi[ok] - r[ok]], fmt="o", color="k", ms=4, capsize=2
    )
    ax.plot(r[~ok], y[~ok], "o", mfc="white", color="k", ms=4)
    for yi, n, ri in zip(y, corr["n_eff"].values, r, strict=True):
        text = f"n_eff={n:.0f}" if np.isfinite(n) and np.isfinite(ri) else "undefined"
        ax.text(1.02, yi, text, fontsize=7, va="center", transform=ax.get_yaxis_transform())
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(y, names, fontsize=7)
    ax.set_xlim(-1, 1)
    ax.set_xlabel("Pearson r (95% bootstrap CI)")
    return ax
