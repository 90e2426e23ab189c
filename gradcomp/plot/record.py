"""Plots of a recording (``gradcomp.record(...).to_dataset()``): each takes ``(ds, ax)``, returns
``ax``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr
from matplotlib.axes import Axes

from gradcomp.dims import ALL, COSINE, GRAD_NORM, LAYER, STEP, TASK, TASK_J, require
from gradcomp.dims import layer as layer_label

__all__ = ["cosine_over_steps", "grad_norm_over_steps"]


def cosine_over_steps(
    ds: xr.Dataset,
    ax: Axes,
    *,
    pair: tuple[str, str] | None = None,
    layers: Sequence[str] | None = None,
) -> Axes:
    """Cosine between two tasks' gradients over training, one line per layer.

    Args:
        ds: a recording with ``cosine``.
        ax: the axes to draw on.
        pair: the two tasks (default: the first two).
        layers: layers to show (default: every layer, ``"all"`` drawn thicker).

    Returns:
        ``ax``.
    """
    require(ds, [COSINE], "gradcomp.record(...)")
    tasks = [str(t) for t in ds[TASK].values]
    if pair is None:
        if len(tasks) < 2:
            raise ValueError("cosine_over_steps needs at least two tasks")
        pair = (tasks[0], tasks[1])
    for t in pair:
        if t not in tasks:
            raise ValueError(f"task {t!r} is not in the recording (tasks: {tasks})")
    cos = ds[COSINE].sel({TASK: pair[0], TASK_J: pair[1]})
    for layer in layers or [str(x) for x in ds[LAYER].values]:
        line = cos.sel({LAYER: layer_label(ds, layer)})
        ax.plot(ds[STEP].values, line.values, label=layer, lw=2.0 if layer == ALL else 1.0)
    ax.axhline(0.0, color="0.6", lw=0.8, ls=":")
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel(f"{ds[STEP].attrs.get('long_name', STEP)}")
    ax.set_ylabel(f"cos(g_{pair[0]}, g_{pair[1]})")
    ax.legend(fontsize="small", title=LAYER)
    return ax


def grad_norm_over_steps(ds: xr.Dataset, ax: Axes, *, layer: str = ALL, log: bool = True) -> Axes:
    """Each task's gradient norm on one layer over training.

    Args:
        ds: a recording with ``grad_norm``.
        ax: the axes to draw on.
        layer: the layer (default ``"all"``; in an NCnet Dataset that is layer ``"hidden"``, see
            :func:`gradcomp.dims.layer`).
        log: logarithmic y axis (zeros are not drawn).

    Returns:
        ``ax``.
    """
    require(ds, [GRAD_NORM], "gradcomp.record(...)")
    norm = ds[GRAD_NORM].sel({LAYER: layer_label(ds, layer)})
    for task in norm[TASK].values:
        y = norm.sel({TASK: task}).values
        ax.plot(ds[STEP].values, np.where(y > 0, y, np.nan) if log else y, label=str(task))
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(f"{ds[STEP].attrs.get('long_name', STEP)}")
    ax.set_ylabel(f"‖g_task‖ on {layer} ({norm.attrs.get('units', '')})")
    ax.legend(fontsize="small", title=TASK)
    return ax
