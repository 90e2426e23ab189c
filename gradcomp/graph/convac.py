"""A tiny convolutional arithmetic circuit (ConvAC) and the rank of its coefficient tensor.

A ConvAC with 1-D inputs ``x_0 … x_{N-1}``, ``M`` representation functions, 1×1 convolutions
and size-2 product pooling computes ``h_y(x) = Σ_{d_0…d_{N-1}} A^y_{d_0…d_{N-1}} Π_j f_{d_j}(x_j)``
(Cohen, Sharir, Shashua 2016; Levine, Yakira, Cohen, Shashua, arXiv 1704.01552, ICLR 2018).
Its coefficient tensor ``A`` (order N, every index of dimension M) is the hierarchical
(binary-tree) decomposition, with ``L = log2 N`` and channel counts ``r_0 … r_{L-1}``::

    φ^{0,j}_γ       = a^{0,j}_{:,γ}                                   (M-vector, γ < r_0)
    φ^{l,j}_γ       = Σ_{α<r_{l-1}} a^{l,j}_{α,γ} φ^{l-1,2j}_α ⊗ φ^{l-1,2j+1}_α   (1 ≤ l < L)
    A               = Σ_{α<r_{L-1}} a^{L}_α φ^{L-1,0}_α ⊗ φ^{L-1,1}_α

Inputs are numbered from 0. For a partition ``(I, J)`` of the inputs, the matricization
``[A]_{I,J}`` has rows indexed by the inputs of ``I`` and columns by those of ``J``; its rank
measures how much correlation between the two groups the network can model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["ConvAC", "coefficient_tensor", "matricization_rank", "matricize", "singular_values"]

#: default relative tolerance of :func:`matricization_rank` (float64): singular values at or
#: below ``RTOL · σ_max`` count as zero. Measured on random Gaussian ConvACs (N ≤ 8, matrices up
#: to 256×256): exact zeros come out at ≤ 1e-14·σ_max (round-off), while genuine singular values
#: reach down to ~1e-11·σ_max (products of Gaussian weights are badly conditioned), so the
#: threshold sits between the two.
RTOL = 1e-12


def _levels(n_inputs: int) -> int:
    if isinstance(n_inputs, bool) or not isinstance(n_inputs, int | np.integer) or n_inputs < 2:
        raise ValueError(f"n_inputs must be an integer ≥ 2, got {n_inputs!r}.")
    levels = int(n_inputs).bit_length() - 1
    if 2**levels != n_inputs:
        raise ValueError(
            f"n_inputs={n_inputs} is not a power of 2: size-2 pooling needs a binary tree over "
            "the inputs, and no rule for an incomplete tree is defined. Pad the input to "
            f"{2 ** (levels + 1)} positions."
        )
    return levels


@dataclass(frozen=True)
class ConvAC:
    """Architecture of a tree ConvAC (1-D inputs, size-2 product pooling, one output).

    Attributes:
        n_inputs: number of input positions N (a power of 2).
        m: number of representation functions M (dimension of each tensor index).
        channels: ``(r_0, …, r_{L-1})``, the channel count after each 1×1 convolution,
            ``L = log2 N`` entries.
        shared: whether a layer's 1×1 convolution shares its weights across positions
            (a convolutional net); ``False`` (default) gives every position its own weights.
    """

    n_inputs: int
    m: int
    channels: tuple[int, ...]
    shared: bool = False

    def __post_init__(self) -> None:
        levels = _levels(self.n_inputs)
        channels = tuple(int(c) for c in self.channels)
        object.__setattr__(self, "channels", channels)
        if len(channels) != levels:
            raise ValueError(
                f"channels needs log2(n_inputs) = {levels} entries (one per pooling level), "
                f"got {len(channels)}: {channels}."
            )
        if self.m < 1 or any(c < 1 for c in channels):
            raise ValueError(f"m and every channel count must be ≥ 1, got m={self.m}, {channels}.")

    @property
    def levels(self) -> int:
        """Number of pooling levels ``L = log2 N``."""
        return len(self.channels)

    def weight_shapes(self) -> list[list[tuple[int, ...]]]:
        """Shapes of the weights, level by level: ``[[a^{l,j} shape for j] for l = 0 … L]``."""
        r, n = self.channels, self.n_inputs
        shapes: list[list[tuple[int, ...]]] = [[(self.m, r[0])] * (1 if self.shared else n)]
        for level in range(1, self.levels):
            count = 1 if self.shared else n // 2**level
            shapes.append([(r[level - 1], r[level])] * count)
        shapes.append([(r[-1],)])
        return shapes

    def n_params(self) -> int:
        """Number of weights: ``Σ_l Σ_j size(a^{l,j})`` (one output)."""
        return int(sum(np.prod(s) for level in self.weight_shapes() for s in level))

    def random_weights(self, rng: np.random.Generator) -> list[list[np.ndarray]]:
        """Independent standard-Gaussian float64 weights in the layout of :meth:`weight_shapes`."""
        return [[rng.standard_normal(s) for s in level] for level in self.weight_shapes()]


def coefficient_tensor(net: ConvAC, weights: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    """The coefficient tensor ``A`` of shape ``(M,) * N`` (axis j is input j), in float64.

    Args:
        net: the architecture.
        weights: as returned by :meth:`ConvAC.random_weights`.

    Returns:
        ``A`` contracted through the tree decomposition in the module docstring.
    """
    expected = net.weight_shapes()
    got = [[np.shape(w) for w in level] for level in weights]
    if got != expected:
        raise ValueError(f"weights have shapes {got}; {net} needs {expected}.")

    def conv(level: int, j: int) -> np.ndarray:
        level_weights = weights[level]
        return np.asarray(level_weights[0 if net.shared else j], dtype=np.float64)

    # phi[j] has shape (channels, M ** (2 ** level)); rows are the channel index γ.
    phi = [conv(0, j).T for j in range(net.n_inputs)]
    for level in range(1, net.levels + 1):
        pooled = [
            np.einsum("ak,al->akl", phi[2 * j], phi[2 * j + 1]).reshape(phi[2 * j].shape[0], -1)
            for j in range(len(phi) // 2)
        ]
        if level < net.levels:
            phi = [conv(level, j).T @ p for j, p in enumerate(pooled)]
        else:
            top = np.asarray(weights[level][0], dtype=np.float64) @ pooled[0]
    return top.reshape((net.m,) * net.n_inputs)


def _check_partition(n: int, part_a: Iterable[int]) -> tuple[list[int], list[int]]:
    a = list(part_a)
    if not a or len(set(a)) != len(a) or any(not 0 <= int(i) < n for i in a):
        raise ValueError(
            f"part_a={a} must be distinct input indices in 0…{n - 1}, non-empty; "
            "its complement must be non-empty too."
        )
    b = [i for i in range(n) if i not in set(a)]
    if not b:
        raise ValueError(f"part_a={a} holds every input: the complement J is empty.")
    return sorted(int(i) for i in a), b


def matricize(tensor: np.ndarray, part_a: Iterable[int]) -> np.ndarray:
    """``[A]_{I,J}``: rows are the inputs of ``I = part_a`` (in increasing order), columns the rest.

    Args:
        tensor: an order-N tensor.
        part_a: the input indices of ``I``; ``J`` is the complement.
    """
    a, b = _check_partition(tensor.ndim, part_a)
    rows = int(np.prod([tensor.shape[i] for i in a]))
    return np.transpose(tensor, a + b).reshape(rows, -1)


def singular_values(tensor: np.ndarray, part_a: Iterable[int]) -> np.ndarray:
    """Singular values of ``[A]_{I,J}`` in float64, largest first."""
    return np.linalg.svd(matricize(np.asarray(tensor, np.float64), part_a), compute_uv=False)


def matricization_rank(tensor: np.ndarray, part_a: Iterable[int], rtol: float = RTOL) -> int:
    """Numerical rank of ``[A]_{I,J}``: the number of singular values above ``rtol · σ_max``.

    Args:
        tensor: the coefficient tensor.
        part_a: the input indices of ``I``.
        rtol: relative tolerance (default :data:`RTOL` = 1e-12, float64).
    """
    s = singular_values(tensor, part_a)
    if s.size == 0 or s[0] == 0:
        return 0
    return int(np.count_nonzero(s > rtol * s[0]))
