"""The tensor-network graph of a tree ConvAC and the min-cut bound on matricization rank.

Levine, Yakira, Cohen, Shashua (arXiv 1704.01552, ICLR 2018): the coefficient tensor of a ConvAC
is a tensor network whose bond dimensions are the channel counts, so for a partition ``(I, J)``
of the inputs ``rank [A]_{I,J} ≤ Π_{e ∈ C} dim(e)`` for every edge set ``C`` whose removal
separates the input legs of ``I`` from those of ``J``. The best such bound is a minimum cut with
edge capacity ``log2 dim(e)`` (base 2: the cut value is in bits, the bound is ``2 ** cut``).
It is attained for almost all weights when all bond dimensions are powers of one integer.

The graph (:func:`convac_graph`) of a ConvAC with ``L = log2 N`` levels has nodes

* ``("input", j)``: the open leg of input ``j`` (the index ``d_j``, dimension ``M``);
* ``("conv", l, j)``: the 1×1-convolution matrix ``a^{l,j}`` (``l < L``);
* ``("pool", l, j)``: the δ (copy) tensor of the product pooling at level ``l`` (``1 ≤ l ≤ L``);
* ``("output",)``: the output weight vector ``a^{L}`` (its output leg has dimension 1);

and edges ``input j —M— conv 0,j``, ``conv l-1,j —r_{l-1}— pool l,j//2``,
``pool l,k —r_{l-1}— conv l,k`` (``l < L``) and ``pool L,0 —r_{L-1}— output``.
Every edge carries ``dim`` (the bond dimension) and ``capacity = log2(dim)``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

import networkx as nx

from gradcomp.graph.convac import ConvAC

__all__ = ["CutBound", "blocks", "convac_graph", "interleaved", "left_right", "min_cut_bound"]

_SOURCE = ("_source",)
_SINK = ("_sink",)


def convac_graph(net: ConvAC) -> nx.Graph:
    """The tensor-network graph of ``net`` (see the module docstring for nodes and edges)."""
    g = nx.Graph(n_inputs=net.n_inputs, m=net.m, channels=str(net.channels))
    r = net.channels

    def bond(u: tuple, v: tuple, dim: int) -> None:
        g.add_edge(u, v, dim=int(dim), capacity=math.log2(dim))

    for j in range(net.n_inputs):
        g.add_node(("input", j), kind="input")
        bond(("input", j), ("conv", 0, j), net.m)
    for level in range(1, net.levels + 1):
        for j in range(net.n_inputs // 2**level):
            pool = ("pool", level, j)
            for child in (2 * j, 2 * j + 1):
                bond(("conv", level - 1, child), pool, r[level - 1])
            if level < net.levels:
                bond(pool, ("conv", level, j), r[level - 1])
            else:
                bond(pool, ("output",), r[level - 1])
    for node in g.nodes:
        g.nodes[node].setdefault("kind", node[0])
    return g


@dataclass(frozen=True)
class CutBound:
    """A minimum cut separating two groups of inputs.

    Attributes:
        bits: the cut value ``Σ_{e∈C} log2 dim(e)``.
        bound: ``Π_{e∈C} dim(e) = 2 ** bits``, an exact integer.
        edges: the cut edges ``C``.
    """

    bits: float
    bound: int
    edges: tuple[tuple[Hashable, Hashable], ...]


def _inputs(g: nx.Graph) -> list[tuple]:
    return [n for n, kind in g.nodes(data="kind") if kind == "input"]


def _validate(g: nx.Graph, part_a: Iterable[int], part_b: Iterable[int] | None) -> tuple:
    if not nx.is_tree(g):
        raise ValueError(
            "the graph is not a tree: the construction covers tree ConvACs (1-D inputs, "
            "size-2 pooling, no overlapping windows); build it with convac_graph()."
        )
    missing = [(u, v) for u, v, d in g.edges(data="dim") if d is None or int(d) < 1]
    if missing:
        raise ValueError(f"edges {missing[:3]} lack a bond dimension 'dim' ≥ 1.")
    known = {n[1] for n in _inputs(g)}
    a = list(part_a)
    b = sorted(known - set(a)) if part_b is None else list(part_b)
    for name, part in (("part_a", a), ("part_b", b)):
        if not part:
            raise ValueError(f"{name} is empty: both sides of a partition need an input.")
        unknown = sorted(set(part) - known, key=str)
        if unknown:
            raise ValueError(f"{name} names unknown inputs {unknown}; inputs are {sorted(known)}.")
        if len(set(part)) != len(part):
            raise ValueError(f"{name}={part} lists an input twice.")
    overlap = sorted(set(a) & set(b))
    if overlap:
        raise ValueError(f"part_a and part_b overlap in inputs {overlap}.")
    left_out = sorted(known - set(a) - set(b))
    if left_out:
        raise ValueError(
            f"inputs {left_out} are in neither part: a partition must cover every input "
            "(pass part_b=None to use the complement of part_a)."
        )
    return a, b


def min_cut_bound(
    g: nx.Graph, part_a: Iterable[int], part_b: Iterable[int] | None = None
) -> CutBound:
    """The min-cut bound on ``rank [A]_{I,J}`` for ``I = part_a`` and ``J = part_b``.

    Solved with ``networkx.minimum_cut`` on capacities ``log2 dim`` between a super-source tied to
    the input legs of ``I`` and a super-sink tied to those of ``J``; the returned bound is the
    exact integer product of the cut edges' dimensions.

    Args:
        g: a tree tensor-network graph as built by :func:`convac_graph`.
        part_a: input indices of ``I`` (numbered from 0).
        part_b: input indices of ``J``; ``None`` (default) for the complement of ``I``.

    Raises:
        ValueError: for a non-tree graph or an invalid partition (empty, overlapping, unknown
            inputs, or not covering every input).
    """
    a, b = _validate(g, part_a, part_b)
    flow = g.copy()
    for i in a:
        flow.add_edge(_SOURCE, ("input", i))  # no capacity attribute: infinite
    for i in b:
        flow.add_edge(("input", i), _SINK)
    value, (side_a, _) = nx.minimum_cut(flow, _SOURCE, _SINK)
    edges = tuple((u, v) for u, v in g.edges if (u in side_a) != (v in side_a))
    bound = math.prod(int(g.edges[e]["dim"]) for e in edges)
    bits = math.log2(bound)
    if not math.isclose(bits, value, rel_tol=1e-9, abs_tol=1e-9):  # pragma: no cover - guard
        raise RuntimeError(f"cut value {value} disagrees with the cut's edges ({bits} bits).")
    return CutBound(bits=bits, bound=bound, edges=edges)


def left_right(n_inputs: int) -> list[int]:
    """``I`` of the left/right (long-range) partition: the first half of the inputs."""
    return list(range(n_inputs // 2))


def interleaved(n_inputs: int) -> list[int]:
    """``I`` of the interleaved (short-range) partition: the even inputs."""
    return list(range(0, n_inputs, 2))


def blocks(n_inputs: int, size: int) -> list[int]:
    """``I`` of the partition into alternating blocks of ``size`` inputs (1: interleaved,
    ``N/2``: left/right); the range of the correlations it asks for grows with ``size``."""
    if size < 1 or n_inputs % (2 * size):
        raise ValueError(f"block size {size} must be ≥ 1 and divide n_inputs/2 = {n_inputs // 2}.")
    return [i for i in range(n_inputs) if (i // size) % 2 == 0]
