"""Min-cut bounds of tree ConvACs (Levine et al., arXiv 1704.01552) against measured ranks."""

from __future__ import annotations

import itertools
import math

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradcomp.graph import (
    ConvAC,
    blocks,
    coefficient_tensor,
    convac_graph,
    interleaved,
    left_right,
    matricization_rank,
    min_cut_bound,
)
from gradcomp.graph.convac import matricize, singular_values


def forward(net: ConvAC, weights, digits) -> float:
    """Obviously-correct reference: run the ConvAC on one-hot inputs f_d(x_j) = e_{d_j}."""
    acts = []
    for j, d in enumerate(digits):
        w = weights[0][0 if net.shared else j]
        acts.append(w[d, :])  # 1x1 conv of a one-hot vector: row d of a^{0,j}
    for level in range(1, net.levels + 1):
        pooled = [acts[2 * k] * acts[2 * k + 1] for k in range(len(acts) // 2)]
        if level < net.levels:
            acts = [weights[level][0 if net.shared else k].T @ p for k, p in enumerate(pooled)]
    return float(weights[-1][0] @ pooled[0])


@pytest.mark.parametrize(
    ("n", "m", "channels", "shared"),
    [(2, 3, (2,), False), (4, 2, (3, 2), False), (4, 3, (2, 4), True), (8, 2, (2, 3, 2), False)],
)
def test_coefficient_tensor_matches_forward_pass(n, m, channels, shared) -> None:
    net = ConvAC(n, m, channels, shared)
    weights = net.random_weights(np.random.default_rng(0))
    a = coefficient_tensor(net, weights)
    for digits in itertools.product(range(m), repeat=n):
        np.testing.assert_allclose(a[digits], forward(net, weights, digits), rtol=1e-12, atol=1e-12)


def tree_min_cut(g: nx.Graph, part_a) -> int:
    """Reference: exact min product cut on a tree by dynamic programming (no networkx flow)."""
    side_of = {("input", i): 0 for i in part_a}
    side_of.update({n: 1 for n in g if n[0] == "input" and n not in side_of})
    root = ("output",)

    def cost(v, parent):
        out = [1, 1]
        for s in (0, 1):
            if v in side_of and side_of[v] != s:
                out[s] = math.inf
        for c in g[v]:
            if c == parent:
                continue
            sub = cost(c, v)
            dim = g.edges[v, c]["dim"]
            for s in (0, 1):
                out[s] = out[s] * min(sub[s], sub[1 - s] * dim)
        return out

    return int(min(cost(root, None)))


def test_n2_by_hand() -> None:
    for m, r0 in itertools.product(range(1, 5), range(1, 5)):
        net = ConvAC(2, m, (r0,))
        assert min_cut_bound(convac_graph(net), [0]).bound == min(m, r0)
        a = coefficient_tensor(net, net.random_weights(np.random.default_rng(m * 10 + r0)))
        assert matricization_rank(a, [0]) == min(m, r0)


def test_n4_by_hand() -> None:
    for m, r0, r1 in itertools.product(range(1, 4), range(1, 5), range(1, 4)):
        g = convac_graph(ConvAC(4, m, (r0, r1)))
        assert min_cut_bound(g, [0, 1]).bound == min(m * m, r0, r1)
        assert min_cut_bound(g, [0, 2]).bound == min(m, r0) ** 2
        assert min_cut_bound(g, [3]).bound == min(m, r0)


def test_cut_edges_and_bits() -> None:
    g = convac_graph(ConvAC(8, 4, (4, 2, 8)))
    cut = min_cut_bound(g, left_right(8))
    assert cut.bound == 2 and cut.bits == 1.0
    assert math.prod(g.edges[e]["dim"] for e in cut.edges) == cut.bound
    cut = min_cut_bound(g, interleaved(8))
    assert cut.bound == 4**4 and cut.bits == pytest.approx(8.0)
    assert len(cut.edges) == 4


def test_networkx_cut_matches_tree_dp() -> None:
    rng = np.random.default_rng(5)
    for _ in range(60):
        n = int(rng.choice([2, 4, 8, 16]))
        levels = n.bit_length() - 1
        net = ConvAC(n, int(rng.integers(1, 7)), tuple(rng.integers(1, 9, size=levels).tolist()))
        part = [i for i in range(n) if rng.random() < 0.5] or [0]
        if len(part) == n:
            part = part[1:]
        g = convac_graph(net)
        assert min_cut_bound(g, part).bound == tree_min_cut(g, part)


def powers_of_common_integer(dims) -> bool:
    top = max(dims)
    return top == 1 or any(
        all(d == p ** round(math.log(d, p)) for d in dims) for p in range(2, top + 1)
    )


tiny_nets = st.sampled_from([2, 4, 8]).flatmap(
    lambda n: st.tuples(
        st.just(n),
        st.integers(1, 3),
        st.lists(st.integers(1, 4), min_size=n.bit_length() - 1, max_size=n.bit_length() - 1),
        st.lists(st.booleans(), min_size=n, max_size=n).filter(lambda s: 0 < sum(s) < n),
        st.integers(0, 2**32 - 1),
        st.booleans(),
    )
)


@settings(max_examples=120, deadline=None)
@given(tiny_nets)
def test_bound_never_below_rank(case) -> None:
    n, m, channels, mask, seed, shared = case
    net = ConvAC(n, m, tuple(channels), shared)
    part = [i for i in range(n) if mask[i]]
    a = coefficient_tensor(net, net.random_weights(np.random.default_rng(seed)))
    rank = matricization_rank(a, part)
    bound = min_cut_bound(convac_graph(net), part).bound
    assert rank <= bound, f"rank {rank} > min-cut {bound} for {net}, I={part}"
    if powers_of_common_integer([m, *channels]) and not shared:
        # Levine et al.: equality for almost all weights; Gaussian weights hit it with prob. 1.
        s = singular_values(a, part)
        assert rank == bound, f"rank {rank} < min-cut {bound} for {net}, I={part}, σ={s}"


@pytest.mark.parametrize("p", [2, 3])
def test_equality_for_powers_of_common_integer(p) -> None:
    rng = np.random.default_rng(p)
    exps = [0, 1] if p == 3 else [0, 1, 2]
    for _ in range(25):
        n = int(rng.choice([4, 8]))
        levels = n.bit_length() - 1
        m = p ** int(rng.choice([1] if n == 8 else exps[1:]))
        channels = tuple(p ** int(e) for e in rng.choice(exps, size=levels))
        net = ConvAC(n, m, channels)
        a = coefficient_tensor(net, net.random_weights(rng))
        g = convac_graph(net)
        for part in (left_right(n), interleaved(n), [0], [0, n - 1]):
            s = singular_values(a, part)
            bound = min_cut_bound(g, part).bound
            # a clear spectral gap: bound-many singular values well above round-off, the rest at it
            assert s[bound - 1] > 1e-12 * s[0]
            assert bound == len(s) or s[bound] < 1e-13 * s[0]
            assert matricization_rank(a, part) == bound


def test_partition_helpers() -> None:
    assert left_right(8) == [0, 1, 2, 3]
    assert interleaved(8) == [0, 2, 4, 6]
    assert blocks(8, 1) == interleaved(8) and blocks(8, 4) == left_right(8)
    assert blocks(8, 2) == [0, 1, 4, 5]
    with pytest.raises(ValueError, match="divide"):
        blocks(8, 3)


def test_invalid_partitions_raise() -> None:
    g = convac_graph(ConvAC(4, 2, (2, 2)))
    with pytest.raises(ValueError, match="part_a is empty"):
        min_cut_bound(g, [])
    with pytest.raises(ValueError, match="part_b is empty"):
        min_cut_bound(g, [0, 1, 2, 3])
    with pytest.raises(ValueError, match="overlap"):
        min_cut_bound(g, [0, 1], [1, 2, 3])
    with pytest.raises(ValueError, match="unknown inputs"):
        min_cut_bound(g, [0, 7])
    with pytest.raises(ValueError, match="twice"):
        min_cut_bound(g, [0, 0])
    with pytest.raises(ValueError, match="neither part"):
        min_cut_bound(g, [0], [1])
    a = coefficient_tensor(
        ConvAC(4, 2, (2, 2)), ConvAC(4, 2, (2, 2)).random_weights(np.random.default_rng(0))
    )
    with pytest.raises(ValueError, match="complement"):
        matricize(a, [0, 1, 2, 3])
    with pytest.raises(ValueError, match="distinct input indices"):
        matricize(a, [5])


def test_non_tree_architectures_raise() -> None:
    with pytest.raises(ValueError, match="not a power of 2"):
        ConvAC(6, 2, (2, 2))
    with pytest.raises(ValueError, match="log2"):
        ConvAC(8, 2, (2, 2))
    with pytest.raises(ValueError, match="≥ 1"):
        ConvAC(4, 2, (0, 2))
    g = convac_graph(ConvAC(4, 2, (2, 2)))
    g.add_edge(("conv", 0, 0), ("conv", 0, 3), dim=2, capacity=1.0)  # overlapping windows
    with pytest.raises(ValueError, match="not a tree"):
        min_cut_bound(g, [0, 1])


def test_weight_shapes_and_params() -> None:
    net = ConvAC(8, 3, (4, 2, 5))
    assert net.n_params() == 8 * 3 * 4 + 4 * 4 * 2 + 2 * 2 * 5 + 5
    shared = ConvAC(8, 3, (4, 2, 5), shared=True)
    assert shared.n_params() == 3 * 4 + 4 * 2 + 2 * 5 + 5
    with pytest.raises(ValueError, match="shapes"):
        coefficient_tensor(net, shared.random_weights(np.random.default_rng(0)))
