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
from matplotlib.ticker import NullFormatter

from gradcomp.dims import (
    ALICE,
    ANALYSIS,
    BOB,
    FEATURE,
    HI,
    LAG,
    LO,
    LR,
    OWN,
    STEP,
    TASK,
    UNIT,
    WIDTH,
    S,
)

__all__ = [
    "conflict_over_training",
    "correlation_panel",
    "lagged_panel",
    "lr_blocks_panel",
    "lr_panel",
    "oscillation_over_training",
    "s_over_training",
    "sensing_by_own_setting",
    "sensing_over_time",
    "unit_map",
]

CONTROL_STYLE = {"color": "0.45", "linestyle": "--"}


def _colors(widths: Sequence[int]) -> dict[int, tuple]:
    cmap = plt.get_cmap("viridis")
    n = max(len(widths) - 1, 1)
    return {int(w): cmap(0.85 * i / n) for i, w in enumerate(widths)}


def _line_band(ax: Axes, x, mid, lo, hi, label: str, **style) -> None:
    """A line ``mid`` against ``x`` with the band between ``lo`` and ``hi`` in its colour."""
    (line,) = ax.plot(x, mid, label=label, lw=1.4, **style)
    ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, lw=0)


def _band(ax: Axes, d: xr.Dataset, name: str, label: str, x: str = STEP, **style) -> None:
    """``d[name]`` against ``d[x]`` with the band between ``name + LO`` and ``name + HI``."""
    _line_band(ax, d[x], d[name], d[name + LO], d[name + HI], label, **style)


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
        _band(ax, d, name, f"n = {w}", color=colors[w])
    if control is not None:
        c = control.mean(TASK) if TASK in control[name].dims else control
        _band(ax, c, name, "unshared", **CONTROL_STYLE)


def s_over_training(
    traces: xr.Dataset, ax: Axes, widths: Sequence[int], control: xr.Dataset | None = None
) -> Axes:
    """S(step) with its bootstrap interval per width; 2 and 2√2 for reference."""
    _series(traces, S, widths, ax, control)
    ax.axhline(2, color="k", lw=0.8)
    ax.axhline(2 * np.sqrt(2), color="k", lw=0.8, ls=":")
    ax.text(0.5, 2.03, "classical bound 2", fontsize=7, va="bottom")
    ax.text(0.5, 2 * np.sqrt(2) + 0.03, "Tsirelson 2√2", fontsize=7, va="bottom")
    ax.set_ylabel("CHSH S (95% CI)")
    _time_axis(ax)
    return ax


def conflict_over_training(traces: xr.Dataset, ax: Axes, widths: Sequence[int]) -> Axes:
    """Share of runs whose A and B gradients on the shared layer conflict (cosine < 0).

    No unshared control is drawn: without a shared layer the A/B Gram is 0 by construction.
    """
    _series(traces, "conflict_share", widths, ax)
    ax.text(
        0.02,
        0.03,
        "unshared control: 0 by construction (no shared layer)",
        fontsize=7,
        transform=ax.transAxes,
    )
    ax.set_ylabel("share of runs with conflicting A/B gradients")
    ax.set_ylim(-0.02, 1.02)
    _time_axis(ax)
    return ax


def oscillation_over_training(
    traces: xr.Dataset, ax: Axes, widths: Sequence[int], window: int | None = None
) -> Axes:
    """Loss oscillation amplitude (seed mean, mean of the two heads) per width.

    The analyzer's value at a step covers the trailing ``window`` steps; with ``window`` it is
    drawn at the window's centre (step − (window − 1) / 2), so a rise is not shifted to the
    right edge of the plot.
    """
    data = traces
    if window is not None:
        data = traces.assign_coords({STEP: traces[STEP] - (window - 1) / 2})
    _series(data, "osc_amplitude", widths, ax)
    ax.set_ylabel("loss swing amplitude (seed mean)")
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
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("training step")
    ax.set_yticks(range(d.sizes[UNIT]))
    ax.set_ylabel("unit rank (0 = most contested)")
    ax.figure.colorbar(mesh, ax=ax, label="share of steps pulled apart", pad=0.02)
    return ax


ACCURACY = "accuracy"  # the decoding accuracy of gradcomp.analyze.sensing


def _sense_mean(s: xr.Dataset) -> xr.Dataset:
    return s[[ACCURACY, ACCURACY + LO, ACCURACY + HI, "null_hi"]].mean((TASK, OWN))


def _accuracy_axes(ax: Axes) -> None:
    """Chance (0.5), the limits and the labels of a decoding-accuracy panel."""
    ax.axhline(0.5, color="k", lw=0.8)
    ax.set_ylim(0.2, 1.02)
    ax.set_ylabel("remote-setting decoding accuracy")
    ax.set_xlabel("training step (window end)")


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
        _band(ax, _sense_mean(sensing.sel({WIDTH: w})), ACCURACY, f"n = {w}", color=colors[w])
    ref = _sense_mean(sensing).max(WIDTH)
    ax.plot(ref[STEP], ref["null_hi"], color="k", ls=":", lw=0.8, label="null 95%")
    if oscillation is not None and oscillation_width is not None:
        _band(
            ax,
            _sense_mean(oscillation.sel({WIDTH: oscillation_width})),
            ACCURACY,
            f"n = {oscillation_width}, from oscillation",
            color=colors[oscillation_width],
            ls="-.",
        )
    if control is not None:
        _band(ax, _sense_mean(control), ACCURACY, "unshared", **CONTROL_STYLE)
    _accuracy_axes(ax)
    ax.legend(fontsize=6, frameon=False, loc="lower right", ncol=3)
    return ax


def lagged_panel(lag: xr.Dataset, ax: Axes, widths: Sequence[int]) -> Axes:
    """r(k) between Δ conflict share and Δ CHSH contribution, pooled within seeds; k > 0: conflict
    leads (:func:`gradcomp.analyze.lagged`, interval from a seed bootstrap).

    The legend gives each width's lead asymmetry with its BH q-value (over widths), when present.
    """
    colors = _colors(list(lag[WIDTH].values))
    for w in widths:
        d = lag.sel({WIDTH: w})
        label = f"n = {w}"
        if "lead_asymmetry_q" in d:
            label += f", asym. {float(d['lead_asymmetry']):+.2f} ({_q(d['lead_asymmetry_q'])})"
        _band(ax, d, "r", label, x=LAG, color=colors[w])
    ax.axhline(0, color="k", lw=0.8)
    ax.axvline(0, color="k", lw=0.5, ls=":")
    ax.set_xlabel("lag $k$ (steps; $k > 0$: conflict leads S)")
    ax.set_ylabel(r"corr($\Delta c_t$, $\Delta s_{t+k}$) within seeds")
    return ax


def correlation_panel(corr: xr.Dataset, ax: Axes) -> Axes:
    """Pearson r with its bootstrap interval per analysis, labelled with n_eff."""
    names = [str(a) for a in corr[ANALYSIS].values]
    y = np.arange(len(names))[::-1]
    r = corr["pearson"].values
    lo, hi = corr["pearson_lo"].values, corr["pearson_hi"].values
    ok = np.isfinite(lo) & np.isfinite(hi)
    ax.errorbar(
        r[ok], y[ok], xerr=[r[ok] - lo[ok], hi[ok] - r[ok]], fmt="o", color="k", ms=4, capsize=2
    )
    ax.plot(r[~ok], y[~ok], "o", mfc="white", color="k", ms=4)
    qs = corr["pearson_q"].values if "pearson_q" in corr else np.full(len(names), np.nan)
    for yi, n, ri, q in zip(y, corr["n_eff"].values, r, qs, strict=True):
        text = f"n_eff={n:.0f}" if np.isfinite(n) and np.isfinite(ri) else "undefined"
        if np.isfinite(q):
            text += f", {_q(q)}"
        ax.text(1.02, yi, text, fontsize=7, va="center", transform=ax.get_yaxis_transform())
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(y, names, fontsize=7)
    ax.set_xlim(-1, 1)
    ax.set_xlabel("Pearson r (95% bootstrap CI)")
    return ax


def _q(q) -> str:
    """``"q = 0.03"`` or ``"q < 0.001"``."""
    q = float(q)
    return "q n/a" if not np.isfinite(q) else f"q = {q:.2g}" if q >= 0.001 else "q < 0.001"


def sensing_by_own_setting(
    sensing: xr.Dataset,
    ax: Axes,
    width: int,
    control: xr.Dataset | None = None,
    alpha: float = 0.05,
) -> Axes:
    """Decoding accuracy of the remote setting from a head's own loss, per own setting.

    Means over the two heads; filled markers: windows whose Benjamini–Hochberg q-value (over
    head x own setting x window) is below ``alpha`` for both heads; the dotted line is the
    permutation null's 95% quantile; ``control`` (e.g. the unshared net with independent
    initialisations per setting pair) is drawn dashed.
    """
    d = sensing.sel({WIDTH: width}) if WIDTH in sensing.dims else sensing
    own_colors = {1: "tab:blue", 2: "tab:orange"}
    for own in d[OWN].values:
        e = d.sel({OWN: own})
        m = e[[ACCURACY, ACCURACY + LO, ACCURACY + HI]].mean(TASK)
        _band(
            ax,
            m,
            ACCURACY,
            f"n = {width}, own setting {int(own)}",
            color=own_colors.get(int(own)),
        )
        if "q_value" in e:
            sig = (e["q_value"] < alpha).all(TASK)
            ax.plot(
                m[STEP].values[sig.values],
                m[ACCURACY].values[sig.values],
                "o",
                ms=3,
                color=own_colors.get(int(own)),
            )
    ax.plot(d[STEP], d["null_hi"].mean((TASK, OWN)), color="k", ls=":", lw=0.8, label="null 95%")
    if control is not None:
        c = control[[ACCURACY, ACCURACY + LO, ACCURACY + HI]].mean((TASK, OWN))
        _band(ax, c, ACCURACY, "unshared, independent inits", **CONTROL_STYLE)
    _accuracy_axes(ax)
    return ax


def lr_panel(
    sweep: xr.Dataset,
    ax: Axes,
    name: str,
    feature: str | None = None,
    log: bool = False,
    style: str = "o-",
    suffix: str = "",
) -> Axes:
    """One quantity of the learning-rate sweep against lr, one line per width.

    ``name`` is a variable of the ``lr_sweep`` node; an interval is drawn when ``name_lo`` /
    ``name_hi`` exist; ``feature`` picks the decoded trace of the sensing summaries.
    """
    colors = _colors(list(sweep[WIDTH].values))
    for w in sweep[WIDTH].values:
        d = sweep.sel({WIDTH: w})
        if feature is not None:
            d = d.sel({FEATURE: feature})
        x = d[LR].values
        y = d[name].values
        label = f"n = {int(w)}{suffix}"
        line = ax.plot(x, y, style, color=colors[int(w)], label=label, ms=4)[0]
        if name + LO in d:
            lo, hi = d[name + LO].values, d[name + HI].values
            ax.errorbar(x, y, yerr=[y - lo, hi - y], fmt="none", color=line.get_color(), lw=1)
    ax.set_xscale("log")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("learning rate")
    ax.set_xticks(sweep[LR].values, [f"{v:g}" for v in sweep[LR].values])
    ax.minorticks_off()
    return ax


def lr_blocks_panel(blocks: xr.Dataset, ax: Axes, width: int, name: str = "osc_detrended") -> Axes:
    """A per-block oscillation measure over training at one width, one line per lr."""
    cmap = plt.get_cmap("plasma")
    lrs = blocks[LR].values
    for i, lr in enumerate(lrs):
        d = blocks[name].sel({LR: lr, WIDTH: width})
        ax.plot(d[STEP], d, color=cmap(0.85 * i / max(len(lrs) - 1, 1)), label=f"lr = {lr:g}")
    ax.set_xlabel("training step (block end)")
    return ax
