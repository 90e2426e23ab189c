"""Task–unit competition graphs from per-unit gradient Grams.

Input: ``unit_gram[..., unit, task, task_j] = ⟨g_{u,i}, g_{u,j}⟩``, the Gram of the per-task
gradients restricted to hidden unit ``u``'s incoming weights (and bias), from
``gradcomp.record(..., units=True)`` or ``gradcomp.ncnet.run(NCnetConfig(..., units=True), …)``.
Definitions (the project's reading of "a real share" and "conflicting pulls"):

* **share** of task ``t`` on unit ``u``: ``s_{u,t} = G_{u,t,t} / Σ_v G_{v,t,t}`` (sum over the
  layer's valid units; a task with zero gradient on the layer has share 0 everywhere).
* task ``t`` is **active** on ``u`` when ``s_{u,t} ≥ τ`` and ``s_{u,t} > 0``; the default threshold
  ``τ = 1 / (2 n_units)`` is half the uniform share.
* ``u`` is **contested** when two tasks ``i ≠ j`` are both active on it and pull against each
  other there: ``G_{u,i,j} < 0``.
* task ``t`` **owns** ``u`` outright when ``t`` is the only active task on ``u``.
* the **graph** is bipartite: task nodes ``("task", t)``, unit nodes ``("unit", u)``, and an edge
  ``t — u`` with ``weight = s_{u,t}`` wherever ``t`` is active on ``u``. ``n_components`` counts its
  connected components that contain a task (2 tasks: 1 if they meet on some unit, else 2).

Units whose Gram is not finite (layers without units are NaN-padded) are left out.
"""

from __future__ import annotations

from collections.abc import Hashable

import networkx as nx
import numpy as np
import xarray as xr

from gradcomp import dims
from gradcomp.provenance import derive, describe, provenance

__all__ = ["competition", "competition_graph", "unit_shares"]

LABELS = {
    "share": ("share of the task's squared gradient norm on the unit", "1"),
    "contested": ("unit is contested (both tasks active, conflicting pulls)", "1"),
    "n_units": ("number of units in the layer", "1"),
    "n_contested": ("number of contested units", "1"),
    "contested_share": ("contested units / units in the layer", "1"),
    "contested_mass": ("share of the task's gradient on contested units", "1"),
    "n_owned": ("number of units the task owns outright", "1"),
    "n_components": ("connected components of the task–unit graph with a task", "1"),
    "min_share": ("share threshold for an active task", "1"),
}


def _select(data: xr.Dataset | xr.DataArray, layer: Hashable | None) -> xr.DataArray:
    if isinstance(data, xr.Dataset):
        dims.require(data, [dims.UNIT_GRAM], hint="gradcomp.record(..., units=True)")
        data = data[dims.UNIT_GRAM]
    for dim in (dims.UNIT, dims.TASK, dims.TASK_J):
        if dim not in data.dims:
            raise ValueError(f"unit_gram needs dims (..., unit, task, task_j); it lacks {dim!r}.")
    if dims.TASK in data.coords and dims.TASK_J in data.coords:
        if list(data[dims.TASK].values) != list(data[dims.TASK_J].values):
            raise ValueError("unit_gram's task and task_j coordinates must list the same tasks.")
    if data.sizes[dims.TASK] < 2:
        raise ValueError("competition needs at least two tasks.")
    if dims.LAYER in data.dims:
        if layer is None:
            finite = [
                str(lay)
                for lay in data[dims.LAYER].values
                if lay != dims.ALL and bool(np.isfinite(data.sel({dims.LAYER: lay})).any())
            ]
            if len(finite) != 1:
                raise ValueError(f"pick a layer with layer=…; layers with per-unit data: {finite}.")
            layer = finite[0]
        known = [str(v) for v in data[dims.LAYER].values]
        if str(layer) not in known:
            raise ValueError(f"layer {layer!r} is not in the recording; layers: {known}.")
        data = data.sel({dims.LAYER: layer})
    return data.transpose(..., dims.UNIT, dims.TASK, dims.TASK_J).astype(np.float64)


def _diag(gram: xr.DataArray) -> np.ndarray:
    return np.diagonal(gram.values, axis1=-2, axis2=-1)  # (..., unit, task)


def unit_shares(
    unit_gram: xr.Dataset | xr.DataArray, layer: Hashable | None = None
) -> xr.DataArray:
    """Shares ``s_{u,t} = G_{u,t,t} / Σ_v G_{v,t,t}`` over the layer's valid units.

    Returns dims ``(..., unit, task)``. Invalid (non-finite) units get NaN; a task with zero
    gradient on the layer gets 0.
    """
    gram = _select(unit_gram, layer)
    diag = _diag(gram)
    valid = np.isfinite(diag).all(axis=-1, keepdims=True)
    mass = np.where(valid, diag, 0.0)
    total = mass.sum(axis=-2, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, mass / np.where(total > 0, total, 1.0), 0.0)
    share = np.where(valid, share, np.nan)
    out_dims = (*gram.dims[:-1],)
    coords = {k: v for k, v in gram.coords.items() if dims.TASK_J not in v.dims}
    return xr.DataArray(share, dims=out_dims, coords=coords, name="share")


def _threshold(n_units: np.ndarray, min_share: float | None) -> np.ndarray:
    if min_share is None:
        with np.errstate(divide="ignore"):
            return np.where(n_units > 0, 0.5 / np.maximum(n_units, 1), np.inf)
    if not 0 < min_share <= 1:
        raise ValueError(f"min_share must be in (0, 1], got {min_share}.")
    return np.full(n_units.shape, float(min_share))


def competition(
    unit_gram: xr.Dataset | xr.DataArray,
    layer: Hashable | None = None,
    min_share: float | None = None,
) -> xr.Dataset:
    """Contested units, ownership and graph components for every slice of ``unit_gram``.

    Args:
        unit_gram: a Dataset with ``unit_gram`` or the DataArray itself, dims
            ``(..., [layer,] unit, task, task_j)``; every other dim (step, seed, alice, bob,
            width) is carried through.
        layer: which layer; may be omitted when exactly one layer has per-unit data.
        min_share: the threshold ``τ``; default ``1 / (2 n_units)`` per slice.

    Returns:
        Dataset with ``share (…, unit, task)``, ``contested (…, unit)`` (int8),
        ``n_units``, ``n_contested``, ``contested_share``, ``n_components``, ``min_share``
        (…), ``contested_mass`` and ``n_owned`` (…, task); see the module docstring. A
        Dataset's attrs are kept (:func:`gradcomp.provenance.derive`: its ``config`` as
        ``source_config``, its history lines first).
    """
    gram = _select(unit_gram, layer)
    share_da = unit_shares(gram)
    share = share_da.values
    valid = np.isfinite(share).all(axis=-1)  # (..., unit)
    n_units = valid.sum(axis=-1)
    tau = _threshold(n_units, min_share)
    active = np.nan_to_num(share, nan=0.0)
    active = (active >= tau[..., None, None]) & (active > 0) & valid[..., None]
    cross = gram.values
    n_tasks = active.shape[-1]
    off = ~np.eye(n_tasks, dtype=bool)
    both = active[..., :, None] & active[..., None, :]
    conflict = both & (np.nan_to_num(cross, nan=0.0) < 0) & off
    contested = conflict.any(axis=(-2, -1))
    owned = active & (active.sum(axis=-1, keepdims=True) == 1)
    # tasks meet when some unit is active for both; count components by transitive closure
    reach = (both.any(axis=-3) | np.eye(n_tasks, dtype=bool)).astype(np.int64)
    for _ in range(n_tasks):
        reach = (np.einsum("...ij,...jk->...ik", reach, reach) > 0).astype(np.int64)
    n_components = np.rint((1.0 / reach.sum(axis=-1)).sum(axis=-1)).astype(np.int64)
    safe_share = np.nan_to_num(share, nan=0.0)

    outer = share_da.dims[:-2]
    unit_dims = (*outer, dims.UNIT)
    task_dims = (*outer, dims.TASK)
    coords = {k: v for k, v in share_da.coords.items()}
    n_contested = contested.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        contested_share = np.where(n_units > 0, n_contested / np.maximum(n_units, 1), np.nan)
    ds = xr.Dataset(
        {
            "share": share_da,
            "contested": (unit_dims, contested.astype(np.int8)),
            "n_units": (outer, n_units.astype(np.int64)),
            "n_contested": (outer, n_contested.astype(np.int64)),
            "contested_share": (outer, contested_share),
            "contested_mass": (task_dims, (safe_share * contested[..., None]).sum(axis=-2)),
            "n_owned": (task_dims, owned.sum(axis=-2).astype(np.int64)),
            "n_components": (outer, n_components),
            "min_share": (outer, tau),
        },
        coords=coords,
    )
    config = {"analysis": "competition", "layer": str(layer), "min_share": str(min_share)}
    # a recording's provenance (strategy, config, history, ...) stays with its analysis
    source = unit_gram.attrs if isinstance(unit_gram, xr.Dataset) else {}
    own = provenance(config)
    own["analysis"] = describe("competition", {"layer": layer, "min_share": min_share})
    ds.attrs.update(derive(source, own))
    return dims.annotate(ds, LABELS)


def competition_graph(
    unit_gram: xr.DataArray, layer: Hashable | None = None, min_share: float | None = None
) -> nx.Graph:
    """The bipartite task–unit graph of one slice (dims ``unit, task, task_j`` only).

    Built unit by unit with plain loops (the reference for :func:`competition`). Nodes
    ``("task", t)`` (``bipartite=0``) and ``("unit", u)`` (``bipartite=1``, attrs ``contested``,
    ``owner``: the owning task or ``None``, ``state``: ``"contested"``, ``"owned"``, ``"shared"``
    or ``"idle"``); edges ``weight = s_{u,t}`` where ``t`` is active on ``u``.
    """
    gram = _select(unit_gram, layer)
    if gram.ndim != 3:
        extra = [d for d in gram.dims if d not in (dims.UNIT, dims.TASK, dims.TASK_J)]
        raise ValueError(f"select one slice first: unit_gram still has dims {extra}.")
    share = unit_shares(gram).values
    tasks = (
        gram[dims.TASK].values.tolist() if dims.TASK in gram.coords else list(range(share.shape[1]))
    )
    units = (
        gram[dims.UNIT].values.tolist() if dims.UNIT in gram.coords else list(range(share.shape[0]))
    )
    valid = [k for k in range(len(units)) if np.isfinite(share[k]).all()]
    tau = float(_threshold(np.asarray(len(valid)), min_share))
    g = nx.Graph(min_share=tau)
    for t in tasks:
        g.add_node((dims.TASK, t), bipartite=0)
    for k in valid:
        act = [i for i in range(len(tasks)) if share[k, i] > 0 and share[k, i] >= tau]
        fight = any(float(gram.values[k, i, j]) < 0 for i in act for j in act if i != j)
        owner = tasks[act[0]] if len(act) == 1 else None
        state = (
            "contested" if fight else "owned" if owner is not None else "shared" if act else "idle"
        )
        g.add_node((dims.UNIT, units[k]), bipartite=1, contested=fight, owner=owner, state=state)
        for i in act:
            g.add_edge((dims.TASK, tasks[i]), (dims.UNIT, units[k]), weight=float(share[k, i]))
    return g
