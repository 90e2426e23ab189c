"""Leave-one-seed-out nearest-centroid decoding of a paired binary label, with label flips.

Samples come in pairs: seed k gives one feature vector x[k, r] for each remote setting r in
{0, 1}. The decoder is a nearest-centroid classifier in features standardised by the training
samples' pooled mean and standard deviation (a diagonal LDA with equal priors); it is trained on
all seeds but k and tested on both samples of seed k (leave one seed out, so a seed's paired
samples are never split between training and test). Label flips ``flip[p, k]`` swap the two
labels of seed k; flip = 0 is the observed labelling, random flips are the permutation null
that keeps the pairing (under "the trace does not depend on the remote setting" the two samples
of a seed are exchangeable).

Everything is vectorised over flips and left-out seeds; nothing is refitted in a loop.
"""

from __future__ import annotations

import numpy as np

__all__ = ["loso_correct", "loso_scores"]


def loso_correct(x: np.ndarray, flip: np.ndarray) -> np.ndarray:
    """Correctness of every leave-one-seed-out prediction under every labelling.

    See :func:`loso_scores`; a sample is predicted label 1 iff its score is > 0.
    """
    score, truth = loso_scores(x, flip)
    return (score > 0).astype(int) == truth


def loso_scores(x: np.ndarray, flip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decision scores of every leave-one-seed-out prediction under every labelling.

    Args:
        x: features, shape ``(n_seeds, 2, n_features)`` (float64), ``x[k, r]`` the trace of
            seed k at remote setting r.
        flip: ``(n_labellings, n_seeds)`` of 0/1; row 0 is usually all zeros (observed).

    Returns:
        ``score, truth``, both ``(n_labellings, n_seeds, 2)``: the score of sample ``x[k, r]``
        (> 0: nearer the label-1 centroid; 0 for equidistant centroids, e.g. identical class
        means, which predicts label 0) and its label ``r XOR flip[p, k]``.
    """
    n = x.shape[0]
    if n < 2:
        raise ValueError("leave-one-seed-out decoding needs at least 2 seeds")
    f = flip.astype(float)  # (P, n)
    delta = x[:, 1] - x[:, 0]  # (n, W)
    total = x.sum((0, 1))
    # pooled training mean / variance without seed k (independent of the labelling)
    m = 2 * (n - 1)
    mu = (total - x.sum(1)) / m  # (n, W)
    var = ((x**2).sum((0, 1)) - (x**2).sum(1)) / m - mu**2
    scale = np.where(var > 1e-12 * (1.0 + mu**2), var, 1.0)  # constant features: no scaling
    # Without seed k, under labelling p, the class centroids c0, c1 satisfy
    #   c0 + c1 = (sum_j x_j0 + x_j1 - x_k0 - x_k1) / (n - 1)        (independent of p)
    #   c1 - c0 = (D - 2 G_p - delta_k + 2 f_pk delta_k) / (n - 1),  D = sum_j delta_j,
    # with G_p = sum_j f_pj delta_j. Sample x_kr is nearer c1 iff
    #   score = sum_w (c1 - c0)_w (2 x_kr - c0 - c1)_w / scale_kw > 0.
    both = (total[None] - x.sum(1)) / (n - 1)  # c0 + c1, (n, W)
    a = (2 * x - both[:, None]) / scale[:, None]  # (n, 2, W)
    d_all = delta.sum(0)
    g = f @ delta  # (P, W)
    score = np.einsum("kw,krw->kr", d_all[None] - delta, a)[None]  # (1, n, 2)
    score = score - 2 * np.einsum("pw,krw->pkr", g, a)
    score = score + 2 * f[..., None] * np.einsum("kw,krw->kr", delta, a)[None]
    truth = np.arange(2)[None, None, :] ^ flip[:, :, None].astype(int)
    return np.broadcast_to(score, truth.shape), truth
