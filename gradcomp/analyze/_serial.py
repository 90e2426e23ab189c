"""Serial dependence: lag-1 autocorrelation, effective sample size, blocks for the bootstrap."""

from __future__ import annotations

import numpy as np

__all__ = ["blocks", "effective_n", "lag1"]


def lag1(series: list[np.ndarray]) -> float:
    """Pooled lag-1 autocorrelation of several series (each 1-D, finite), 0 if undefined."""
    num = den = 0.0
    for s in series:
        if s.size < 3:
            continue
        c = s - s.mean()
        num += float(np.sum(c[:-1] * c[1:]))
        den += float(np.sum(c * c))
    return num / den if den > 0 else 0.0


def effective_n(n: int, rx: float, ry: float) -> float:
    """n_eff = n (1 - rx ry) / (1 + rx ry) for AR(1)-like series (Bretherton et al. 1999, eq. 31).

    Only positive products shrink the sample; a negative product is not allowed to inflate it
    (capped at n).
    """
    prod = float(np.clip(rx * ry, 0.0, 0.999))
    return n * (1.0 - prod) / (1.0 + prod)


def blocks(groups: np.ndarray, length: int) -> list[np.ndarray]:
    """Consecutive index blocks of ``length`` within each group (for a moving-block bootstrap).

    Args:
        groups: group label of each observation, observations of a group in serial order.
        length: block length (1 gives the ordinary bootstrap).
    """
    out: list[np.ndarray] = []
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        out.extend(idx[i : i + length] for i in range(0, idx.size, length))
    return out
