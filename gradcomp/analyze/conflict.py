"""Gradient conflict between tasks: cosine, magnitude similarity, conflict frequency and energy.

For per-task gradients g_i, g_j of one layer's shared parameters (their Gram entries
G_ij = <g_i, g_j> come from the recorder):

- cosine: cos_ij = G_ij / sqrt(G_ii G_jj) (NaN where a norm is 0; :func:`gradcomp.gram.cosine`);
- gradient-magnitude similarity (Yu et al. 2020, PCGrad; logged by Aligned-MTL, Senushkin et al.
  CVPR 2023): GMS_ij = 2 ||g_i|| ||g_j|| / (||g_i||^2 + ||g_j||^2)
  = 2 sqrt(G_ii G_jj) / (G_ii + G_jj);
- condition number of the task-gradient matrix (Aligned-MTL): sqrt(lambda_max / lambda_min) of G;
- conflict indicator: cos_ij < threshold; conflict frequency: its mean over a rolling window of
  traced steps; conflict count: steps with cos_ij < threshold over the whole trace (Shi et al.
  ICLR 2023, Recon's "S-conflict" count; its per-layer score sums the count over pairs i < j);
- conflict energy: the negative part of the inner product, max(-G_ij, 0);
- per-unit competition (from ``unit_gram``): the same cosine restricted to one hidden neuron's
  incoming weights, its rolling conflict frequency ("how often") and the rolling mean of
  max(-cos, 0) ("how strongly") the tasks pull that neuron's weights in opposite directions.

Zhao, Wu, Hou (2026, arXiv 2603.04451) attribute S > 2 to this competition for shared neurons.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from gradcomp.analyze._checks import finish, need, need_dims, need_length
from gradcomp.dims import LAYER, STEP, TASK, TASK_J, UNIT
from gradcomp.gram import cosine

__all__ = ["conflict"]

LABELS: dict[str, tuple[str, str]] = {
    "cosine": ("cosine between per-task gradients", "1"),
    "gms": ("gradient-magnitude similarity", "1"),
    "condition_number": ("condition number of the task-gradient matrix", "1"),
    "conflicting": ("conflict indicator (cosine below threshold)", "1"),
    "conflict_frequency": ("share of steps in the window with conflicting gradients", "1"),
    "conflict_count": ("number of steps with conflicting gradients (Recon count)", "1"),
    "recon_score": ("Recon S-conflict score (steps counted, summed over task pairs i<j)", "1"),
    "conflict_energy": ("negative part of the per-task gradient inner product", "1"),
    "unit_cosine": ("per-unit cosine between per-task gradients", "1"),
    "unit_conflict_frequency": ("share of steps in the window a unit is pulled apart", "1"),
    "unit_conflict_strength": ("mean negative part of the per-unit cosine in the window", "1"),
}


def _diagonal(gram: xr.DataArray) -> tuple[xr.DataArray, xr.DataArray]:
    """G_ii as a DataArray over ``task`` and G_jj over ``task_j`` (lazy)."""
    tasks = gram[TASK].values
    gii = xr.concat([gram.sel({TASK: t, TASK_J: t}, drop=True) for t in tasks], dim=TASK)
    gii = gii.assign_coords({TASK: tasks})
    return gii, gii.rename({TASK: TASK_J})


def _rolling_mean(da: xr.DataArray, window: int) -> xr.DataArray:
    return da.rolling({STEP: window}, min_periods=window).mean()


def _indicator(cos: xr.DataArray, threshold: float) -> xr.DataArray:
    return (cos < threshold).astype(float).where(cos.notnull())


def _condition_number(gram: xr.DataArray) -> xr.DataArray:
    def cond(g: np.ndarray) -> np.ndarray:
        bad = ~np.isfinite(g).all((-2, -1))  # e.g. a NaN-padded entry: NaN, not an error
        lam = np.linalg.eigvalsh(np.where(bad[..., None, None], np.eye(g.shape[-1]), g))
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            out = np.sqrt(lam[..., -1] / lam[..., 0])  # inf when numerically singular
        return np.where(bad, np.nan, np.where(lam[..., 0] > 0, out, np.inf))

    return xr.apply_ufunc(
        cond,
        gram,
        input_core_dims=[[TASK, TASK_J]],
        dask="parallelized",
        output_dtypes=[float],
    )


def conflict(
    ds: xr.Dataset, threshold: float = 0.0, window: int = 10, units: bool | None = None
) -> xr.Dataset:
    """Conflict statistics of every task pair, per layer, over training.

    Args:
        ds: a recording or ensemble with ``gram(..., step, layer, task, task_j)``; with
            ``unit_gram`` the per-unit competition is added. Any extra leading dims (seed,
            alice, bob, width) are carried through; dask-backed inputs stay lazy.
        threshold: a pair conflicts at a step when its cosine is strictly below this (Recon's S;
            0 means "pointing into opposite half-spaces").
        window: rolling window, in traced steps, of the conflict frequencies (the value at a
            step covers that step and the ``window - 1`` traced steps before it).
        units: per-unit competition: ``None`` adds it when ``unit_gram`` is present, ``True``
            requires it, ``False`` skips it.

    Returns:
        Dataset with ``cosine``, ``gms``, ``condition_number``, ``conflicting``,
        ``conflict_frequency``, ``conflict_count``, ``recon_score``, ``conflict_energy`` and,
        with units, ``unit_cosine``, ``unit_conflict_frequency``, ``unit_conflict_strength``.

    Raises:
        ValueError: if ``gram`` is missing or has the wrong dims, or the trace is shorter
            than ``window``, or ``units=True`` without ``unit_gram``.
    """
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a cosine and must lie in [-1, 1], got {threshold}")
    if window < 1:
        raise ValueError(f"window must be a positive number of traced steps, got {window}")
    need(ds, ["gram"])
    gram = ds["gram"]
    need_dims(gram, (STEP, LAYER, TASK, TASK_J), "gram")
    need_length(gram, STEP, window, f"a conflict window of {window} steps")

    gii, gjj = _diagonal(gram)
    cos = cosine(gram)
    conflicting = _indicator(cos, threshold)
    count = (cos < threshold).sum(STEP)
    itask = xr.DataArray(np.arange(gram.sizes[TASK]), dims=TASK)
    jtask = xr.DataArray(np.arange(gram.sizes[TASK_J]), dims=TASK_J)
    out = xr.Dataset(
        {
            "cosine": cos,
            "gms": (2 * (gii * gjj) ** 0.5 / (gii + gjj).where(gii + gjj > 0)).transpose(
                *gram.dims
            ),
            "condition_number": _condition_number(gram),
            "conflicting": conflicting,
            "conflict_frequency": _rolling_mean(conflicting, window),
            "conflict_count": count,
            "recon_score": count.where(itask < jtask).sum((TASK, TASK_J)),
            "conflict_energy": (-gram).clip(min=0.0),
        }
    )
    if units:
        need(ds, ["unit_gram"])
    if units is not False and "unit_gram" in ds.variables:
        unit_gram = ds["unit_gram"]
        need_dims(unit_gram, (STEP, LAYER, UNIT, TASK, TASK_J), "unit_gram")
        ucos = cosine(unit_gram)
        out["unit_cosine"] = ucos
        out["unit_conflict_frequency"] = _rolling_mean(_indicator(ucos, threshold), window)
        out["unit_conflict_strength"] = _rolling_mean((-ucos).clip(min=0.0), window)
    config = {"threshold": threshold, "window": window, "units": int("unit_cosine" in out)}
    return finish(out, LABELS, "conflict", config, source=ds)
