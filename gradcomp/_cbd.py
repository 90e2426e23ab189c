"""Per-seed configurations and the CbD margin's bounds for :mod:`gradcomp.chsh`.

A seed's eight ±1 outcomes (a11, a12, a21, a22, b11, b12, b21, b22) take one of 256
configurations. Every statistic of :func:`gradcomp.chsh.estimate` is a mean over seeds of a
linear form ``y = z·w + c`` of the per-seed features ``z`` (four products ``a_ij b_ij`` and four
per-seed shifts), so its exact power sums are the per-cell configuration counts times the form's
value per configuration, and its per-seed range is known exactly. The margin construction
(intersection–union over σ, two-step moment selection over placements k; Romano, Shaikh, Wolf
2014) is stated in the docstring of :mod:`gradcomp.chsh`.
"""

from __future__ import annotations

import itertools

import numpy as np

from gradcomp._exact import clopper_pearson, mean_bound, mean_pvalue
from gradcomp.dims import CBD_MARGIN, HI, LO

__all__ = [
    "CONFIGS",
    "FLIPS",
    "OUTCOMES",
    "PLACEMENTS",
    "S_SIGNS",
    "Forms",
    "delta_bounds",
    "features",
    "margin",
    "shift_intervals",
]

#: sign of each C_ij in S (pairs in the order 11, 12, 21, 22)
S_SIGNS = np.array([1.0, 1.0, 1.0, -1.0])
#: the eight odd sign placements L_k (one minus sign at k, then three minus signs: all but k)
PLACEMENTS = np.concatenate([1 - 2 * np.eye(4), 2 * np.eye(4) - 1])
#: σ ∈ {±1}⁴, so that Σ|d_t| = max_σ σ·d
SIGMAS = np.array(list(itertools.product((1.0, -1.0), repeat=4)))


def features(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-seed integer features ``(..., 8)`` from outcomes ``(..., 2, 2)`` (alice, bob).

    ``x11, x12, x21, x22`` (products ``a_ij b_ij``) and the per-seed shifts
    ``a11 − a12, a21 − a22, b11 − b21, b12 − b22`` (in the order of :data:`SHIFTS`).
    """
    x = (a * b).reshape(*a.shape[:-2], 4)
    d = np.stack(
        [
            a[..., 0, 0] - a[..., 0, 1],
            a[..., 1, 0] - a[..., 1, 1],
            b[..., 0, 0] - b[..., 1, 0],
            b[..., 0, 1] - b[..., 1, 1],
        ],
        axis=-1,
    )
    return np.concatenate([x, d], axis=-1)


#: the 256 outcome configurations of one seed (a11, a12, a21, a22, b11, b12, b21, b22)
OUTCOMES = np.array(list(itertools.product((-1.0, 1.0), repeat=8)))
#: their features (products and per-seed shifts)
CONFIGS = features(OUTCOMES[:, :4].reshape(-1, 2, 2), OUTCOMES[:, 4:].reshape(-1, 2, 2))
#: does Alice's / Bob's / either outcome flip with the remote setting (per configuration)
_A_FLIP = (CONFIGS[:, 4:6] != 0).any(1)
_B_FLIP = (CONFIGS[:, 6:] != 0).any(1)
FLIPS = np.stack([_A_FLIP, _B_FLIP, _A_FLIP | _B_FLIP], axis=1).astype(float)


class Forms:
    """Linear forms ``y = z·w + c`` of the per-seed features, summed exactly over seeds.

    A seed's eight outcomes take one of 256 configurations, so every sum over seeds is a
    product of the per-cell configuration counts (E, 256) with the form's value per
    configuration: exact integers, and the per-seed range of ``y`` comes for free.
    """

    def __init__(self, counts: np.ndarray, n: np.ndarray) -> None:
        self.counts, self.n = counts, n  # (E, 256), (E,)

    def sums(self, w: np.ndarray, c: float = 0.0) -> tuple[np.ndarray, ...]:
        """``Σy, Σy², Σy³`` (E, K) and the range ``lo, hi`` (K,) of the forms ``w`` (K, 8)."""
        values = CONFIGS @ np.atleast_2d(w).T + c  # (256, K)
        s1, s2, s3 = (self.counts @ values**k for k in (1, 2, 3))
        return s1, s2, s3, values.min(0), values.max(0)


def shift_intervals(n10, n01, n, error: float) -> tuple[np.ndarray, np.ndarray]:
    """Simultaneous ``1 − error`` intervals of the four shifts ``2 (p10 − p01)``.

    Bonferroni over eight Clopper–Pearson intervals (p10 and p01 of each shift).
    """
    lo10, hi10 = clopper_pearson(n10, n[:, None], 1 - error / 8)
    lo01, hi01 = clopper_pearson(n01, n[:, None], 1 - error / 8)
    return 2 * (lo10 - hi01), 2 * (hi10 - lo01)


def delta_bounds(d_lo: np.ndarray, d_hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Projection of boxes ``[d_lo, d_hi]`` (E, 4) onto ``Σ|d_t|``."""
    low = np.where(d_lo > 0, d_lo, np.where(d_hi < 0, -d_hi, 0.0)).sum(-1)
    return low, np.maximum(np.abs(d_lo), np.abs(d_hi)).sum(-1)


def margin(forms: Forms, alpha: float, n10, n01) -> dict[str, np.ndarray]:
    """CbD margin: p-value, lower bound (IUT over σ, moment selection over k) and upper bound."""
    beta = alpha / 20
    n = forms.n[:, None]
    # pre-test: drop placement k if some j has L_j > L_k significantly (Bonferroni over the 7 j)
    diff = (PLACEMENTS[:, None, :] - PLACEMENTS[None, :, :]).reshape(64, 4)
    s1, s2, s3, lo, _ = forms.sums(np.pad(diff, ((0, 0), (0, 4))))
    p_dom = mean_pvalue(s1, s2, s3, n, 0, np.minimum(lo, -1.0)).reshape(-1, 8, 8)  # (E, j, k)
    p_dom[:, np.arange(8), np.arange(8)] = 1.0
    keep = (p_dom.min(1) >= beta / 7) | (forms.n < 2)[:, None]  # (E, k)
    n_keep = keep.sum(-1, keepdims=True)  # ≥ 1: the estimated maximum is never dominated

    w = np.concatenate(
        [np.repeat(PLACEMENTS, 16, axis=0), -np.tile(SIGMAS, (8, 1))], axis=1
    )  # (128, 8): ℓ_kσ = L_k − σ·d − 2
    s1, s2, s3, lo, hi = forms.sums(w, -2.0)
    p_k = mean_pvalue(s1, s2, s3, n, 0, lo).reshape(-1, 8, 16).max(-1)
    p = np.where(keep, p_k, np.inf).min(-1) * n_keep[:, 0] + beta
    error = (alpha / 2 - beta) / n_keep  # (E, 1)
    lcb = np.full(s1.shape, np.nan)
    for e in np.unique(error):  # at most eight distinct levels
        rows = error[:, 0] == e
        lcb[rows] = mean_bound(s1[rows], s2[rows], s3[rows], n[rows], float(e), lo, hi, "lower")
    m_lo = np.where(keep, lcb.reshape(-1, 8, 16).min(-1), -np.inf).max(-1)

    # upper bound: max_k UCB(L_k) at alpha/4 minus the lower bound of Δ at alpha/4
    s1, s2, s3, lo, hi = forms.sums(np.pad(PLACEMENTS, ((0, 0), (0, 4))))
    ucb = mean_bound(s1, s2, s3, n, alpha / 4, lo, hi, "upper").max(-1)
    d_lo, d_hi = shift_intervals(n10, n01, forms.n, alpha / 4)
    m_hi = ucb - 2 - delta_bounds(d_lo, d_hi)[0]
    return {"cbd_p_value": np.minimum(p, 1.0), CBD_MARGIN + LO: m_lo, CBD_MARGIN + HI: m_hi}
