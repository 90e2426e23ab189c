"""Plug-in mutual information of a 2 x 2 confusion table, in bits (vectorised)."""

from __future__ import annotations

import numpy as np

__all__ = ["confusion_mi", "miller_madow_bias"]


def confusion_mi(counts: np.ndarray) -> np.ndarray:
    """I(Y; Yhat) = sum_ab p_ab log2(p_ab / (p_a p_b)) from counts ``(..., 2, 2)`` [true, pred].

    The plug-in estimate is biased upward by about (2-1)(2-1) / (2 N ln 2) bits
    (Miller 1955; Panzeri & Treves 1996) for N predictions; see :func:`miller_madow_bias`.
    """
    counts = np.asarray(counts, dtype=float)
    total = counts.sum((-2, -1), keepdims=True)
    p = counts / np.where(total > 0, total, 1.0)
    pa = p.sum(-1, keepdims=True)
    pb = p.sum(-2, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log2(p / (pa * pb)), 0.0)
    return np.maximum(terms.sum((-2, -1)), 0.0)


def miller_madow_bias(n: int | np.ndarray) -> np.ndarray:
    """First-order upward bias of the plug-in information of a 2 x 2 table: 1 / (2 N ln 2) bits."""
    return 1.0 / (2.0 * np.asarray(n, dtype=float) * np.log(2.0))
