"""The design consequence of the min-cut bound: channel profiles against correlation range.

Levine, Yakira, Cohen, Shashua (arXiv 1704.01552): at a fixed parameter budget, widening the
early layers ("wide base") raises the bound for short-range partitions (interleaved inputs),
widening the deep layers ("wide tip") raises it for long-range ones (left/right halves).
:func:`design_bounds` tabulates ``log2`` of the min-cut bound over partitions into alternating
blocks of ``size`` inputs (1 = interleaved … N/2 = left/right), and optionally the measured
``log2 rank`` of random Gaussian ConvACs of the same profiles.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr

from gradcomp import dims
from gradcomp.graph.convac import ConvAC, coefficient_tensor, matricization_rank
from gradcomp.graph.mincut import blocks, convac_graph, min_cut_bound
from gradcomp.provenance import provenance

__all__ = ["design_bounds"]

LABELS = {
    "bits": ("min-cut bound on log2 rank [A]_{I,J}", "bit"),
    "rank_bits": ("measured log2 rank [A]_{I,J} (random Gaussian weights)", "bit"),
    "n_params": ("weights in the ConvAC", "1"),
    "channels": ("channels after each 1×1 convolution", "1"),
    dims.BLOCK: ("partition block size in inputs (1: interleaved, N/2: left/right)", "1"),
    dims.LEVEL: ("pooling level", "1"),
}


def design_bounds(
    profiles: Mapping[str, Sequence[int]],
    n_inputs: int,
    m: int,
    measure_seed: int | None = None,
) -> xr.Dataset:
    """Bounds (and optionally measured ranks) per channel profile and partition block size.

    Args:
        profiles: name → channel counts ``(r_0, …, r_{L-1})``.
        n_inputs: N (a power of 2).
        m: representation functions M.
        measure_seed: when given, also draw Gaussian weights with this seed and measure
            ``log2 rank`` (only sensible for tiny nets: the tensor has ``M ** N`` entries).

    Returns:
        Dataset with ``bits (profile, block)``, ``n_params (profile)``, ``channels (profile,
        level)`` and, when measured, ``rank_bits (profile, block)``.
    """
    if not profiles:
        raise ValueError("give at least one channel profile.")
    nets = {name: ConvAC(n_inputs, m, tuple(ch)) for name, ch in profiles.items()}
    levels = next(iter(nets.values())).levels
    sizes = [2**k for k in range(levels)]
    bits = np.array(
        [
            [min_cut_bound(convac_graph(net), blocks(n_inputs, s)).bits for s in sizes]
            for net in nets.values()
        ]
    )
    profile, block, level = dims.PROFILE, dims.BLOCK, dims.LEVEL
    ds = xr.Dataset(
        {
            "bits": ((profile, block), bits),
            "n_params": ((profile,), [net.n_params() for net in nets.values()]),
            "channels": ((profile, level), [list(net.channels) for net in nets.values()]),
        },
        coords={profile: list(nets), block: sizes, level: np.arange(levels)},
    )
    if measure_seed is not None:
        if m**n_inputs > 2**20:
            raise ValueError(
                f"M**N = {m**n_inputs} entries is too large to measure; use a tinier net."
            )
        rng = np.random.default_rng(measure_seed)
        ranks = []
        for net in nets.values():
            a = coefficient_tensor(net, net.random_weights(rng))
            ranks.append([np.log2(matricization_rank(a, blocks(n_inputs, s))) for s in sizes])
        ds["rank_bits"] = ((profile, block), np.array(ranks))
    config = {"analysis": "convac_design", "n_inputs": n_inputs, "m": m, "profiles": dict(profiles)}
    config["measure_seed"] = str(measure_seed)
    ds.attrs.update(provenance(config))
    ds.attrs.update(n_inputs=int(n_inputs), m=int(m))
    return dims.annotate(ds, LABELS)
