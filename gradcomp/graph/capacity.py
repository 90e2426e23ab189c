"""Capacity of the shared channel between the two heads of NCnet and of a LoRA transformer.

The same construction as the ConvAC bound (Levine et al., arXiv 1704.01552): a graph whose edges
are the channels of the *trainable shared* parameters, with the capacity of the shared channel
between Alice's head ``A`` and Bob's head ``B`` given by a minimum cut between them.

* NCnet: both heads read one hidden layer of width ``n`` (node ``("hidden", "shared")``, edges
  ``head —n— hidden``); without sharing, each head reads its own hidden layer and the heads are
  disconnected. The input is data, not a trainable channel, so it is not a node (the project's
  reading: competition happens only over shared trainable parameters).
* LoRA: each adapted module ``k`` of rank ``r_k`` is a node joined to every head whose gradient
  passes through it (``head —r_k— adapter``); frozen weights carry no competed channel.

Two units (``unit=``):

* ``"channels"`` (default): max-flow with capacity = channel count, i.e. the fewest channels one
  must remove to separate the heads: the shared hidden width for NCnet, ``Σ r_k`` over the
  adapters both heads use for LoRA, 0 when nothing is shared.
* ``"bits"``: min-cut with capacity ``log2`` of the channel count, the tensor-network
  (entanglement) bound in bits: ``log2 n`` for NCnet, ``Σ log2 r_k`` over shared adapters.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import networkx as nx
import numpy as np
import xarray as xr

from gradcomp import dims

__all__ = ["capacity_coord", "lora_graph", "ncnet_graph", "shared_capacity"]

HEADS = ("A", "B")
UNITS = ("channels", "bits")


def _bond(g: nx.Graph, u: tuple, v: tuple, dim: int) -> None:
    if int(dim) < 1:
        raise ValueError(f"a channel count must be ≥ 1, got {dim} on {u}—{v}.")
    g.add_edge(u, v, dim=int(dim))


def ncnet_graph(width: int, shared: bool = True) -> nx.Graph:
    """Graph of NCnet's trainable channels: two heads on one hidden layer of ``width`` units.

    Args:
        width: hidden width ``n``.
        shared: ``False`` gives each head its own hidden layer (no shared channel).
    """
    g = nx.Graph()
    g.add_nodes_from(("head", h) for h in HEADS)
    for h in HEADS:
        _bond(g, ("head", h), ("hidden", "shared" if shared else h), width)
    return g


def lora_graph(
    ranks: Mapping[str, int], users: Mapping[str, Iterable[str]] | None = None
) -> nx.Graph:
    """Graph of LoRA adapters and the heads whose gradients pass through them.

    Args:
        ranks: adapted module name → LoRA rank.
        users: module name → heads (``"A"``, ``"B"``) that use it; default: both heads use
            every adapter (a shared trunk).
    """
    g = nx.Graph()
    g.add_nodes_from(("head", h) for h in HEADS)
    for name, rank in ranks.items():
        heads = list(HEADS if users is None else users.get(name, ()))
        unknown = sorted(set(heads) - set(HEADS))
        if unknown:
            raise ValueError(f"users[{name!r}] names unknown heads {unknown}; heads are {HEADS}.")
        if not heads:
            raise ValueError(f"adapter {name!r} is used by no head; drop it or name its heads.")
        for h in heads:
            _bond(g, ("head", h), ("adapter", name), rank)
    return g


def shared_capacity(g: nx.Graph, unit: str = "channels") -> float:
    """Capacity of the shared channel between heads ``A`` and ``B`` of ``g``.

    Args:
        g: a graph from :func:`ncnet_graph` or :func:`lora_graph` (edges carry ``dim``).
        unit: ``"channels"`` (max-flow of channel counts) or ``"bits"`` (min-cut of log2 counts).

    Returns:
        The capacity; 0 when the heads share nothing.
    """
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {unit!r}.")
    a, b = ("head", "A"), ("head", "B")
    if a not in g or b not in g:
        raise ValueError("the graph needs nodes ('head', 'A') and ('head', 'B').")
    if not nx.has_path(g, a, b):
        return 0.0
    flow = nx.Graph()
    for u, v, dim in g.edges(data="dim"):
        flow.add_edge(u, v, capacity=int(dim) if unit == "channels" else math.log2(dim))
    return float(nx.minimum_cut_value(flow, a, b))


def capacity_coord(
    ds: xr.Dataset | xr.DataArray, unit: str = "channels", adapted_modules: int | None = None
) -> xr.DataArray:
    """Shared-channel capacity as a coordinate next to ``width`` (NCnet) or ``rank`` (LoRA).

    Use as ``ds.assign_coords(shared_capacity=capacity_coord(ds))``.

    Args:
        ds: a Dataset or DataArray with a ``width`` or ``rank`` coordinate; an NCnet Dataset
            with ``attrs["unshared"] = 1`` (the control without sharing) gets capacity 0.
        unit: ``"channels"`` or ``"bits"`` (see the module docstring).
        adapted_modules: for ``rank``: how many adapted modules, each of that rank, both heads
            use. Default: the ``layer`` entries other than ``"all"`` (``gradcomp.lora`` records
            one per adapted module of the encoder both heads read; the project's reading).

    Returns:
        A DataArray named ``shared_capacity`` over ``width`` or ``rank``.
    """
    if dims.WIDTH in ds.coords:
        dim = dims.WIDTH
        shared = not int(ds.attrs.get("unshared", 0))  # gradcomp.ncnet.run records the control
        values = [shared_capacity(ncnet_graph(int(w), shared), unit) for w in ds[dim].values]
    elif dims.RANK in ds.coords:
        dim = dims.RANK
        if adapted_modules is None and dims.LAYER in ds.coords:
            # gradcomp.lora: one layer entry per adapted module, all on the shared encoder
            adapted_modules = sum(str(v) != dims.ALL for v in ds[dims.LAYER].values)
        if adapted_modules is None or adapted_modules < 1:
            raise ValueError(
                "a rank coordinate needs adapted_modules=k (the number of LoRA adapters both "
                "heads use); the Dataset does not say how many modules were adapted."
            )
        values = [
            shared_capacity(lora_graph({f"m{k}": int(r) for k in range(adapted_modules)}), unit)
            for r in ds[dim].values
        ]
    else:
        raise ValueError("ds has neither a 'width' nor a 'rank' coordinate to attach capacity to.")
    out = xr.DataArray(np.asarray(values, float), dims=(dim,), coords={dim: ds[dim].values})
    out.name = "shared_capacity"
    # UDUNITS units: a channel count is dimensionless ("1"), a log2 count is in bits
    out.attrs.update(
        long_name=f"shared-channel capacity between the heads (in {unit})",
        units="1" if unit == "channels" else "bit",
    )
    return out
