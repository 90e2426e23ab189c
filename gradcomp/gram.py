"""The statistics core: Gram matrices of per-task gradients, norms and cosines, and their Dataset.

Every experiment family (the recorder, the NCnet and LoRA ensembles, a new one) reduces its
per-task gradients with these functions and labels the result with :func:`gram_dataset`, so that
the analyzers read one data model (``docs/data-model.md``).

For per-task gradients ``g_1 .. g_T`` of one group of shared parameters (a layer):

- Gram: ``G_ts = ⟨g_t, g_s⟩ = Σ_p g_t[p] g_s[p]`` (:func:`gram`), accumulated in
  :func:`acc_dtype` (float64 stays float64, anything else float32);
- per-unit Gram: the same sum restricted to unit ``u``'s parameters (:func:`unit_gram`);
- norm: ``‖g_t‖ = √G_tt`` (:func:`grad_norm`, a rounding-negative diagonal counts as 0);
- cosine: ``cos_ts = G_ts / (‖g_t‖ ‖g_s‖)`` clipped to [−1, 1], NaN where a norm is 0 (a task
  whose gradient is exactly zero has no direction, so neither conflict nor agreement;
  :func:`cosine`). Yu et al. (2020, PCGrad) call ``cos_ts < 0`` conflicting gradients.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from gradcomp.dims import LAYER, TASK, TASK_J, UNIT, annotate

__all__ = [
    "acc_dtype",
    "cosine",
    "grad_norm",
    "gram",
    "gram_dataset",
    "unit_gram",
    "with_total",
]

Array = TypeVar("Array", np.ndarray, xr.DataArray)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype for gradients of ``dtype``: float64 stays, anything else is float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def gram(stack: Tensor | Sequence[Tensor], lead: int = 1) -> Tensor:
    """Gram matrices ``G_ts = Σ_p g_t[p] g_s[p]`` of per-task gradients, in :func:`acc_dtype`.

    Args:
        stack: ``[..., T, P]`` per-task gradients (``...``: any batch dims, e.g. seeds), or a
            sequence of per-parameter gradients ``[..., T, *shape_i]`` that are flattened after
            their first ``lead`` dims and concatenated (one vector per task over all of them).
        lead: with a sequence, the number of leading dims ``[..., T]`` kept (1: ``[T, ...]``).

    Returns:
        ``[..., T, T]``.
    """
    if not isinstance(stack, Tensor):
        if not stack:
            raise ValueError("gram() needs at least one gradient tensor")
        stack = torch.cat([s.flatten(lead) for s in stack], dim=lead)
    flat = stack.to(acc_dtype(stack.dtype))
    return flat @ flat.mT


def unit_gram(rows: Tensor) -> Tensor:
    """Per-unit Gram matrices ``G^u_ts = Σ_d g_t[u, d] g_s[u, d]``, in :func:`acc_dtype`.

    Args:
        rows: ``[..., T, U, D]`` per-task gradients, unit ``u``'s ``D`` parameters in row ``u``
            (a neuron's incoming weights: the output row of a Linear weight).

    Returns:
        ``[..., U, T, T]``.
    """
    if rows.dim() < 3:
        raise ValueError(f"unit_gram needs [..., T, U, D] gradients, got shape {tuple(rows.shape)}")
    flat = rows.to(acc_dtype(rows.dtype))
    return torch.einsum("...tud,...sud->...uts", flat, flat)


def with_total(grams: Tensor, dim: int = 0) -> Tensor:
    """Append the ``"all"`` entry (the sum over the layers ``dim``) to per-layer Grams.

    The Gram of all shared parameters as one vector is the sum of the per-layer Grams when the
    layers partition the parameters.
    """
    return torch.cat([grams, grams.sum(dim, keepdim=True)], dim=dim)


def grad_norm(g: Array) -> Array:
    """Per-task gradient norms ``‖g_t‖ = √G_tt`` from Grams ``[..., T, T]`` (a NaN or negative
    diagonal from rounding counts as 0), in ``g``'s dtype."""
    if isinstance(g, xr.DataArray):
        return _apply(grad_norm, g, [[TASK]])
    _square(g)
    return np.sqrt(np.clip(np.diagonal(g, axis1=-2, axis2=-1), 0.0, None))


def cosine(g: Array) -> Array:
    """Cosines ``G_ts / (‖g_t‖ ‖g_s‖)`` from Grams over the last two axes (or the ``task``,
    ``task_j`` dims of a DataArray, kept lazy when dask-backed), clipped to [−1, 1] and NaN where
    either norm is 0, in ``g``'s dtype."""
    if isinstance(g, xr.DataArray):
        return _apply(cosine, g, [[TASK, TASK_J]])
    norm = grad_norm(g)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # diverged runs: inf
        denom = norm[..., :, None] * norm[..., None, :]
        cos = np.where(denom > 0, g / np.where(denom > 0, denom, 1.0), np.nan)
    return np.clip(cos, -1.0, 1.0).astype(g.dtype, copy=False)


def _square(g: np.ndarray) -> None:
    if g.ndim < 2 or g.shape[-1] != g.shape[-2]:
        raise ValueError(f"Gram matrices must be [..., T, T], got shape {g.shape}")


def _apply(fn: Any, g: xr.DataArray, out_dims: list[list[str]]) -> xr.DataArray:
    if TASK not in g.dims or TASK_J not in g.dims:
        raise ValueError(f"a Gram DataArray needs dims {TASK!r} and {TASK_J!r}, got {g.dims}")
    if TASK in g.coords and TASK_J in g.coords:
        if not np.array_equal(g[TASK].values, g[TASK_J].values):
            raise ValueError(f"a Gram's {TASK!r} and {TASK_J!r} coordinates must be the same tasks")
    out = xr.apply_ufunc(
        fn,
        g,
        input_core_dims=[[TASK, TASK_J]],
        output_core_dims=out_dims,
        dask="parallelized",
        output_dtypes=[g.dtype],
    )
    return out.transpose(*[d for d in g.dims if d in out.dims])


def gram_dataset(
    g: np.ndarray,
    dims: Sequence[str],
    coords: Mapping[str, Any],
    *,
    tasks: Sequence[str],
    layers: Sequence[str],
    units: np.ndarray | None = None,
    data: Mapping[str, Any] | None = None,
    labels: Mapping[str, tuple[str, str]] | None = None,
) -> xr.Dataset:
    """The labelled Dataset of Gram statistics: ``gram``, ``grad_norm``, ``cosine`` (and
    ``unit_gram``), after the family's own variables ``data``.

    Args:
        g: ``[*dims, layer, task, task_j]`` Grams (:func:`gram`; the last layer is usually
            ``"all"``, :func:`with_total`).
        dims: names of the leading dims of ``g`` (e.g. ``(step,)`` or ``(seed, alice, bob,
            step)``).
        coords: coordinates of ``dims`` (any dim without one gets none).
        tasks: the task names (``task`` and ``task_j``).
        layers: the layer names.
        units: ``[*dims, layer, unit, task, task_j]`` per-unit Grams (:func:`unit_gram`) or
            ``None``.
        data: the family's other variables ``name -> (dims, values)`` (e.g. ``loss``, the
            outcomes ``a`` and ``b``), placed first.
        labels: extra ``name -> (long_name, units)`` labels (``gradcomp.dims.annotate``).

    Returns:
        The Dataset, annotated (``long_name``, ``units``).
    """
    dims = tuple(dims)
    g = np.asarray(g)
    if g.ndim != len(dims) + 3 or g.shape[-3] != len(layers) or g.shape[-1] != len(tasks):
        raise ValueError(
            f"gram of shape {g.shape} does not match dims {dims} + (layer, task, task_j) "
            f"with {len(layers)} layers and {len(tasks)} tasks"
        )
    pair = (*dims, LAYER, TASK, TASK_J)
    variables: dict[str, Any] = dict(data or {})
    variables["gram"] = (pair, g)
    variables["grad_norm"] = ((*dims, LAYER, TASK), grad_norm(g))
    variables["cosine"] = (pair, cosine(g))
    all_coords: dict[str, Any] = {d: coords[d] for d in dims if d in coords}
    all_coords.update({TASK: list(tasks), TASK_J: list(tasks), LAYER: list(layers)})
    if units is not None:
        variables["unit_gram"] = ((*dims, LAYER, UNIT, TASK, TASK_J), units)
        all_coords[UNIT] = np.arange(units.shape[-3], dtype=np.int64)
    return annotate(xr.Dataset(variables, coords=all_coords), labels)
