"""Exact and Student-t bounds for means of bounded integer per-seed values, vectorised.

Every quantity of :mod:`gradcomp.chsh` is a mean over seeds of a per-seed value ``y`` that is an
integer combination of ±1 outcomes and lies in a known range ``[lo, hi]``. Callers pass exact
integer sums ``Σy`` and ``Σy²`` (exact in float64), so that "the sample variance is zero" and
"the mean equals the null value" are decided without round-off.

* Positive sample variance: Student t on the mean, ``ȳ ± t_{n−1, 1−γ} s / √n``.
* Zero sample variance (every seed has the same value ``v``): the exact worst-case bound over
  all distributions on ``[lo, hi]``. If ``P(y ≥ v) = q`` then ``μ ≥ q v + (1 − q) lo``, and seeing
  ``n`` values ``v`` has probability ``≤ q^n``; with the Clopper–Pearson bound ``q ≥ γ^{1/n}``
  the lower bound is ``v − (v − lo)(1 − γ^{1/n})`` and the p-value of ``μ ≤ μ0 < v`` is
  ``((μ0 − lo)/(v − lo))^n`` (the rule of three is its ``lo = 0`` case).

Clopper & Pearson (1934), Biometrika 26, 404; McNemar (1947), Psychometrika 12, 153.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

__all__ = ["clopper_pearson", "mcnemar_exact", "mean_bound", "mean_pvalue"]


def _moments(total, sumsq, n):
    n = np.asarray(n, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = total / n
        ss = n * sumsq - total * total  # exact integer: n (n − 1) s²
        se = np.sqrt(np.maximum(ss, 0.0) / (n * n * (n - 1)))
    return n, mean, ss, se


def mean_bound(total, sumsq, n, gamma: float, lo, hi, side: str) -> np.ndarray:
    """One-sided ``1 − gamma`` confidence bound of the mean of ``y ∈ [lo, hi]``.

    Args:
        total, sumsq: exact ``Σy`` and ``Σy²`` (arrays broadcasting together).
        n: number of seeds (NaN out where ``n < 2``).
        gamma: error probability of the one-sided bound.
        lo, hi: range of a single ``y``.
        side: ``"lower"`` or ``"upper"``.

    Returns:
        The bound, clipped to ``[lo, hi]``: Student t where the sample variance is positive,
        the exact worst-case bound where it is zero.
    """
    n, mean, ss, se = _moments(total, sumsq, n)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = stats.t.ppf(1 - gamma, np.maximum(n - 1, 1))
        shrink = 1 - gamma ** (1 / n)
    if side == "lower":
        exact = mean - (mean - lo) * shrink
        out = np.where(ss > 0, mean - t * se, exact)
    elif side == "upper":
        exact = mean + (hi - mean) * shrink
        out = np.where(ss > 0, mean + t * se, exact)
    else:
        raise ValueError(f"side must be 'lower' or 'upper', got {side!r}")
    return np.where(n >= 2, np.clip(out, lo, hi), np.nan)


def mean_pvalue(total, sumsq, n, null, lo) -> np.ndarray:
    """One-sided p-value of H0: ``mean ≤ null`` against H1: ``mean > null`` for ``y ≥ lo``.

    Student t where the sample variance is positive (``p = 0.5`` when ``ȳ = null`` exactly);
    with zero variance at value ``v``: 1 if ``v ≤ null``, else ``((null − lo)/(v − lo))^n``.
    ``null`` must be an integer so that ``Σy − n·null`` is exact. NaN where ``n < 2``.
    """
    n, mean, ss, se = _moments(total, sumsq, n)
    excess = total - n * null  # exact integer
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(excess == 0, 0.0, (excess / n) / se)
        p_t = stats.t.sf(z, np.maximum(n - 1, 1))
        ratio = np.where(excess > 0, (null - lo) / np.where(excess > 0, mean - lo, 1.0), 1.0)
        p_exact = ratio**n
    return np.where(n >= 2, np.where(ss > 0, p_t, p_exact), np.nan)


def clopper_pearson(k, n, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided Clopper–Pearson interval of a binomial share ``k / n`` (NaN where ``n = 0``)."""
    k, n = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    alpha = 1 - confidence
    with np.errstate(divide="ignore", invalid="ignore"):
        lo = np.where(k > 0, stats.beta.ppf(alpha / 2, k, n - k + 1), 0.0)
        hi = np.where(k < n, stats.beta.ppf(1 - alpha / 2, k + 1, n - k), 1.0)
    bad = n <= 0
    return np.where(bad, np.nan, lo), np.where(bad, np.nan, hi)


def mcnemar_exact(n10, n01) -> np.ndarray:
    """Exact McNemar test: two-sided binomial test of ``n10`` of ``n10 + n01`` discordant at 1/2.

    Equals ``scipy.stats.binomtest(n10, n10 + n01, 0.5).pvalue`` (the binomial(m, 1/2) is
    symmetric, so the two-sided p-value is twice the smaller tail); 1 without discordant seeds.
    """
    n10, n01 = np.asarray(n10, dtype=float), np.asarray(n01, dtype=float)
    m = n10 + n01
    tail = stats.binom.cdf(np.minimum(n10, n01), m, 0.5)
    return np.where(m > 0, np.minimum(1.0, 2 * tail), 1.0)
