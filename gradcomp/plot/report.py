"""A one-page report of any gradcomp Dataset: a recording, an NCnet or LoRA ensemble, a sweep.

:func:`figure` draws one panel per kind of data the Dataset holds (:func:`panels`), labelled from
the variables' ``long_name`` and ``units``:

- ``loss``: each task's loss over steps (mean over ``seed, alice, bob`` for ensembles);
- ``cosine``: the cosine between the first two tasks' gradients per layer over steps (from
  ``gram``, :func:`gradcomp.analyze.conflict`; ensemble mean), with the cosine at the shared
  representation from ``rep_gram`` where recorded;
- ``conflict``: the conflict share per layer over steps: for an ensemble the share of runs
  (seed × setting pair) whose two gradients have cosine < 0, with a 95% Clopper–Pearson band; for
  one recording the share of conflicting steps in a trailing window (no band: steps are not
  independent);
- ``units``: unit competition from ``unit_gram``: each hidden unit's conflict share over steps
  (as above) on the first layer with units, as a heat map;
- ``S``: CHSH S(step) with its interval band: the Dataset's own ``S, S_lo, S_hi`` when it holds
  them over ``step``, otherwise :func:`gradcomp.chsh.estimate` of its ±1 outcomes ``a, b``.

Every dimension other than ``step``, the replicate dims (``seed, alice, bob``) and the panel's own
(``task``, ``layer``, ``unit``) is a grid dim (``width``, ``rank``, sweep axes): one line per grid
point, at most :data:`MAX_SERIES` per panel (the rest are left out and the panel says so).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from gradcomp._exact import clopper_pearson
from gradcomp.dims import (
    ALICE,
    ALL,
    BOB,
    COSINE,
    GRAM,
    HI,
    LAYER,
    LO,
    LOSS,
    MARGINAL,
    OUTCOME_A,
    OUTCOME_B,
    PARAM,
    SEED,
    STEP,
    TASK,
    TASK_J,
    UNIT,
    UNIT_GRAM,
    S,
)
from gradcomp.plot.mechanism import _band, _colors, _line_band, _time_axis

__all__ = [
    "DRAW",
    "MAX_SERIES",
    "PANELS",
    "conflict_share",
    "cosine",
    "figure",
    "losses",
    "panels",
    "s_over_steps",
    "unit_competition",
]

#: the panels, in the order they are drawn
PANELS = (LOSS, COSINE, "conflict", "units", S)

#: most lines (grid points × tasks or layers) drawn in one panel
MAX_SERIES = 12

_REPLICATES = (SEED, ALICE, BOB)
_STYLES = ("-", "--", ":", "-.")


def _has(ds: xr.Dataset, name: str, dims: Sequence[str]) -> bool:
    return name in ds.variables and all(d in ds[name].dims for d in dims)


def _outcomes(ds: xr.Dataset) -> bool:
    dims = (SEED, ALICE, BOB, STEP)
    a, b = OUTCOME_A, OUTCOME_B
    return _has(ds, a, dims) and _has(ds, b, dims) and ds[a].dims == ds[b].dims


def _s_stored(ds: xr.Dataset) -> bool:
    return all(_has(ds, v, (STEP,)) for v in (S, S + LO, S + HI))


def panels(ds: xr.Dataset) -> list[str]:
    """The panels :func:`figure` draws for ``ds`` (a sub-sequence of :data:`PANELS`)."""
    pair = (STEP, LAYER, TASK, TASK_J)
    two_tasks = TASK in ds.sizes and ds.sizes[TASK] >= 2
    out = []
    if _has(ds, LOSS, (STEP, TASK)):
        out.append(LOSS)
    if _has(ds, GRAM, pair) and two_tasks:
        out += [COSINE, "conflict"]
    if _has(ds, UNIT_GRAM, (STEP, LAYER, UNIT, TASK, TASK_J)) and two_tasks:
        out.append("units")
    if _s_stored(ds) or _outcomes(ds):
        out.append(S)
    return out


# -- helpers ----------------------------------------------------------------------------------
def _label(da: xr.DataArray, fallback: str) -> str:
    """``long_name (units)`` of ``da`` (no units shown for ``"1"``)."""
    name = str(da.attrs.get("long_name", fallback))
    units = str(da.attrs.get("units", ""))
    return name if units in ("", "1") else f"{name} ({units})"


def _grid_dims(da: xr.DataArray, own: Sequence[str]) -> list[Hashable]:
    return [d for d in da.dims if d not in (STEP, *_REPLICATES, *own)]


def _replicated(da: xr.DataArray) -> bool:
    return any(da.sizes.get(d, 1) > 1 for d in _REPLICATES)


def _points(da: xr.DataArray, dims: Sequence[Hashable]) -> list[dict[Hashable, object]]:
    """Every combination of the coordinates of ``dims`` (one dict per line)."""
    values = [da[d].values.tolist() if d in da.coords else range(da.sizes[d]) for d in dims]
    return [dict(zip(dims, combo, strict=True)) for combo in itertools.product(*values)]


def _name(point: dict[Hashable, object]) -> str:
    return ", ".join(f"{d} = {v}" for d, v in point.items())


def _steps_axis(ax: Axes, ds: xr.Dataset) -> None:
    """Label the x axis from ``step``'s attrs; symlog when steps are log-spaced."""
    steps = np.asarray(ds[STEP].values, dtype=float)
    label = _label(ds[STEP], STEP)
    gaps = np.diff(steps)
    if len(gaps) > 1 and gaps.min() > 0 and gaps.max() / gaps.min() > 4:
        _time_axis(ax, label)
    else:
        ax.set_xlabel(label)


def _pair(ds: xr.Dataset) -> tuple[str, str]:
    tasks = [str(t) for t in ds[TASK].values]
    return tasks[0], tasks[1]


def _cut(points: list, per_point: int, ax: Axes) -> list:
    """At most :data:`MAX_SERIES` lines; say on the axes how many were left out."""
    keep = max(MAX_SERIES // max(per_point, 1), 1)
    if len(points) > keep:
        ax.text(0.99, 0.01, f"first {keep} of {len(points)} grid points", fontsize=7,
                ha="right", va="bottom", transform=ax.transAxes)  # fmt: skip
        return points[:keep]
    return points


def _layers(da: xr.DataArray, n_points: int) -> list[str]:
    """Every layer, or only ``"all"`` when the lines would exceed :data:`MAX_SERIES`."""
    layers = [str(x) for x in da[LAYER].values]
    if len(layers) * n_points > MAX_SERIES and ALL in layers:
        return [ALL]
    return layers


# -- panels -----------------------------------------------------------------------------------
def _prepare(ds: xr.Dataset) -> xr.Dataset:
    """Integer coordinates for dims without one; grid dims of size 1 dropped (one grid point)."""
    ds = ds.assign_coords({d: np.arange(n) for d, n in ds.sizes.items() if d not in ds.coords})
    own = (STEP, TASK, TASK_J, LAYER, UNIT, *_REPLICATES)
    return ds.isel({d: 0 for d, n in ds.sizes.items() if n == 1 and d not in own})


def _conflict_stats(ds: xr.Dataset, units: bool = False) -> xr.Dataset:
    from gradcomp.analyze.conflict import conflict

    keep = [GRAM, UNIT_GRAM] if units else [GRAM]
    return conflict(ds[keep], window=_window(ds), units=units)


def losses(ds: xr.Dataset, ax: Axes) -> Axes:
    """Each task's ``loss`` over steps (mean over ``seed, alice, bob``), one line per task and
    grid point; log scale when every value is positive."""
    ds = _prepare(ds)
    loss = ds[LOSS]
    grid = _grid_dims(loss, (TASK,))
    mean = loss.mean([d for d in _REPLICATES if d in loss.dims], skipna=True)
    tasks = [str(t) for t in loss[TASK].values]
    points = _cut(_points(loss, grid), len(tasks), ax)
    colors = _colors(list(range(len(points)))) if grid else {}
    for k, point in enumerate(points):
        for i, task in enumerate(tasks):
            y = mean.sel(point).sel({TASK: task})
            style: dict[str, Any]
            if grid:
                style = {"color": colors[k], "ls": _STYLES[i % len(_STYLES)]}
                label = f"{task}, {_name(point)}"
            else:
                style, label = {}, task
            ax.plot(ds[STEP].values, y.values, label=label, lw=1.2, **style)
    positive = np.nanmin(mean.values) > 0 if np.isfinite(mean.values).any() else False
    if positive:
        ax.set_yscale("log")
    ax.set_ylabel(_label(loss, LOSS) + (" (replicate mean)" if _replicated(loss) else ""))
    ax.set_title("losses")
    _steps_axis(ax, ds)
    return ax


def _pair_lines(
    ds: xr.Dataset, da: xr.DataArray, ax: Axes, *, band: tuple[xr.DataArray, xr.DataArray] | None
) -> None:
    """One line per (grid point, layer) of ``da(..., step, layer)``; the ``band`` (if given) is
    drawn around the layer ``"all"`` only when there are several layers."""
    grid = _grid_dims(da, (LAYER,))
    all_points = _points(da, grid)
    layers = _layers(da, len(all_points))
    points = _cut(all_points, len(layers), ax)
    colors = _colors(list(range(max(len(points), len(layers)))))
    for k, point in enumerate(points):
        for i, layer in enumerate(layers):
            sel = {**point, LAYER: layer}
            style: dict[str, Any]
            if grid:
                style = {"color": colors[k], "ls": _STYLES[i % len(_STYLES)]}
                label = f"{layer}, {_name(point)}"
            else:
                style, label = {"color": colors[i]}, layer
            y = da.sel(sel).values
            if band is None or (len(layers) > 1 and layer != ALL):
                ax.plot(ds[STEP].values, y, label=label, lw=2.0 if layer == ALL else 1.2, **style)
            else:
                lo, hi = (b.sel(sel).values for b in band)
                _line_band(ax, ds[STEP].values, y, lo, hi, label, **style)


def cosine(ds: xr.Dataset, ax: Axes) -> Axes:
    """Cosine between the first two tasks' gradients per layer over steps (ensemble mean), from
    ``gram``; with ``rep_gram`` also the cosine at the shared representation (dashed)."""
    from gradcomp.gram import cosine as from_gram

    ds = _prepare(ds)
    stats = _conflict_stats(ds)
    a, b = _pair(ds)
    cos = stats[COSINE].sel({TASK: a, TASK_J: b})
    mean = cos.mean([d for d in _REPLICATES if d in cos.dims], skipna=True)
    _pair_lines(ds, mean, ax, band=None)
    if _has(ds, "rep_gram", (STEP, TASK, TASK_J)):
        rep = from_gram(ds["rep_gram"]).sel({TASK: a, TASK_J: b})
        rep = rep.mean([d for d in rep.dims if d != STEP], skipna=True)
        ax.plot(ds[STEP].values, rep.values, color="k", ls="--", lw=1.2,
                label="shared representation (rep_gram)")  # fmt: skip
    ax.axhline(0.0, color="0.6", lw=0.8, ls=":")
    ax.set_ylim(-1.05, 1.05)
    extra = " (replicate mean)" if _replicated(cos) else ""
    ax.set_ylabel(f"cos(g_{a}, g_{b}){extra}")
    ax.set_title(_label(ds[COSINE], COSINE) if COSINE in ds else COSINE)
    _steps_axis(ax, ds)
    return ax


def _share(ind: xr.DataArray) -> tuple[xr.DataArray, xr.DataArray, xr.DataArray]:
    """Share of replicates with indicator 1, and its 95% Clopper–Pearson interval."""
    dims = [d for d in _REPLICATES if d in ind.dims]
    k = ind.sum(dims, skipna=True)
    n = ind.notnull().sum(dims)
    lo, hi = clopper_pearson(k.values, n.values, 0.95)
    share = k / n.where(n > 0)
    return share, k.copy(data=lo), k.copy(data=hi)


def _window(ds: xr.Dataset) -> int:
    return int(min(10, max(1, ds.sizes[STEP] // 5)))


def conflict_share(ds: xr.Dataset, ax: Axes) -> Axes:
    """Conflict share per layer over steps, from ``gram``: for an ensemble the share of runs with
    cosine < 0 and its 95% Clopper–Pearson band, for one recording the share of the last w steps
    (w = min(10, steps // 5), at least 1)."""
    ds = _prepare(ds)
    stats = _conflict_stats(ds)
    window = _window(ds)
    a, b = _pair(ds)
    sel = {TASK: a, TASK_J: b}
    if _replicated(stats["conflicting"]):
        share, lo, hi = _share(stats["conflicting"].sel(sel))
        _pair_lines(ds, share, ax, band=(lo, hi))
        ax.set_ylabel(f"share of runs with cos(g_{a}, g_{b}) < 0 (95% CI)")
    else:
        freq = stats["conflict_frequency"].sel(sel)
        _pair_lines(ds, freq.squeeze([d for d in _REPLICATES if d in freq.dims]), ax, band=None)
        ax.set_ylabel(f"share of the last {window} steps with cos(g_{a}, g_{b}) < 0")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("conflict share")
    _steps_axis(ax, ds)
    return ax


def unit_competition(ds: xr.Dataset, ax: Axes) -> Axes:
    """Each hidden unit's conflict share (cosine of the unit's per-task gradients < 0; share of
    runs, or of the last w steps for one recording) over steps, as a heat map, on the first layer
    with units at the last grid point; from ``unit_gram``."""
    ds = _prepare(ds)
    stats = _conflict_stats(ds, units=True)
    window = _window(ds)
    a, b = _pair(ds)
    ucos = stats["unit_cosine"].sel({TASK: a, TASK_J: b})
    layers = [
        str(x) for x in ucos[LAYER].values if str(x) != ALL and ucos.sel({LAYER: x}).notnull().any()
    ]
    if not layers:
        ax.text(0.5, 0.5, "no layer with units", ha="center", transform=ax.transAxes)
        ax.set_title("unit competition")
        return ax
    ucos = ucos.sel({LAYER: layers[0]})
    grid = _grid_dims(ucos, (UNIT,))
    last = {d: ucos[d].values[-1] if d in ucos.coords else ucos.sizes[d] - 1 for d in grid}
    ucos = ucos.sel({d: v for d, v in last.items() if d in ucos.coords})
    ucos = ucos.isel({d: -1 for d in grid if d not in ucos.coords})
    ind = (ucos < 0).astype(float).where(ucos.notnull())
    if _replicated(ind):
        share = ind.mean([d for d in _REPLICATES if d in ind.dims], skipna=True)
        what = "share of runs"
    else:
        share = ind.squeeze([d for d in _REPLICATES if d in ind.dims])
        share = share.rolling({STEP: window}, min_periods=window).mean()
        what = f"share of the last {window} steps"
    share = share.dropna(UNIT, how="all").transpose(UNIT, STEP)
    mesh = ax.pcolormesh(ds[STEP].values, np.arange(share.sizes[UNIT]), share.values,
                         shading="nearest", vmin=0.0, vmax=1.0, cmap="magma")  # fmt: skip
    ax.figure.colorbar(mesh, ax=ax, label=f"{what} with unit cos < 0")
    ax.set_ylabel(_label(ds[UNIT], UNIT) if UNIT in ds.coords else UNIT)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    where = f"{layers[0]}" + (f", {_name(last)}" if last else "")
    ax.set_title(f"unit competition ({where}; {a} vs {b})")
    _steps_axis(ax, ds)
    return ax


def _chsh(ds: xr.Dataset) -> xr.Dataset:
    """``S, S_lo, S_hi`` over ``step``: stored, or estimated from the outcomes."""
    if _s_stored(ds):
        return ds[[S, S + LO, S + HI]]
    from gradcomp.chsh import estimate

    a, b = ds[OUTCOME_A], ds[OUTCOME_B]
    order = [SEED, ALICE, BOB, *[d for d in a.dims if d not in (SEED, ALICE, BOB)]]
    return estimate(a.transpose(*order), b.transpose(*order))


def s_over_steps(ds: xr.Dataset, ax: Axes) -> Axes:
    """CHSH S(step) with its ``[S_lo, S_hi]`` band per grid point: the Dataset's own ``S`` or
    :func:`gradcomp.chsh.estimate` of its outcomes ``a, b``; lines at 2 and 2√2."""
    ds = _prepare(ds)
    ax.set_title("CHSH S")
    try:
        s = _chsh(ds)
    except ValueError as err:
        ax.text(0.5, 0.5, f"S not estimable:\n{err}", ha="center", va="center", wrap=True,
                fontsize=7, transform=ax.transAxes)  # fmt: skip
        return ax
    grid = _grid_dims(s[S], ())
    points = _cut(_points(s[S], grid), 1, ax)
    colors = _colors(list(range(len(points))))
    for k, point in enumerate(points):
        d = s.sel(point)
        label = _name(point) or S
        marker = "o" if d.sizes[STEP] < 4 else None  # a point or two: no line to see
        _band(ax, d, S, label, color=colors[k], marker=marker)
    ax.axhline(2, color="k", lw=0.8)
    ax.axhline(2 * np.sqrt(2), color="k", lw=0.8, ls=":")
    ax.set_ylabel(f"{_label(s[S], S)}, with [S_lo, S_hi]")
    _steps_axis(ax, ds)
    return ax


# -- figure -----------------------------------------------------------------------------------
def _title(ds: xr.Dataset) -> str:
    """The experiment (``attrs["experiment"]``, else recording or dataset) and its sizes."""
    what = str(ds.attrs.get("experiment", "recording" if "strategy" in ds.attrs else "dataset"))
    inner = (TASK, TASK_J, LAYER, UNIT, MARGINAL, PARAM)
    sizes = ", ".join(f"{d} {n}" for d, n in ds.sizes.items() if d not in inner)
    return f"{what} ({sizes})" if sizes else what


#: the function drawing each panel
DRAW: dict[str, Callable[[xr.Dataset, Axes], Axes]] = {
    LOSS: losses,
    COSINE: cosine,
    "conflict": conflict_share,
    "units": unit_competition,
    S: s_over_steps,
}


def figure(ds: xr.Dataset, *, title: str | None = None) -> Figure:
    """The one-page report of ``ds``: one panel per entry of :func:`panels` (drawn by
    :data:`DRAW`), two per row.

    Each panel's axes carry the label ``"panel:<name>"`` (``ax.get_label()``).

    Args:
        ds: a gradcomp Dataset (recording, ensemble or sweep).
        title: shown above the panels (default: the experiment and the sizes).

    Raises:
        ValueError: nothing to plot (no panel applies).
    """
    title = title if title is not None else _title(ds)
    names = panels(ds)
    if not names:
        raise ValueError(
            "nothing to plot: the Dataset has none of loss(step, task), gram(step, layer, task, "
            "task_j), unit_gram, S(step) or outcomes a, b(seed, alice, bob, step)"
        )
    rows = (len(names) + 1) // 2
    fig = Figure(figsize=(12, 3.8 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, 2, squeeze=False).ravel()
    for ax, name in zip(axes, names, strict=False):
        ax.set_label(f"panel:{name}")
        DRAW[name](ds, ax)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="x-small")
    for ax in axes[len(names) :]:
        ax.remove()
    fig.suptitle(title)
    return fig
