"""CHSH statistics of ±1 outcomes, with intervals, the signaling measure and the CbD criterion.

Outcomes ``a`` (Alice's head) and ``b`` (Bob's head) have dimensions ``(seed, alice, bob, ...)``;
settings are 1 and 2. For setting pair (i, j), ``C_ij = ⟨a b⟩`` over seeds, and

    S = C11 + C12 + C21 − C22                                   (Clauser, Horne, Shimony, Holt 1969)

Without signaling, and with each seed's outcomes fixed by shared randomness, |S| ≤ 2. Heads that
share weights may signal: Alice's marginal may depend on Bob's setting. The signaling measure is

    Δ = Σ_i |⟨A_i⟩_{B=1} − ⟨A_i⟩_{B=2}| + Σ_j |⟨B_j⟩_{A=1} − ⟨B_j⟩_{A=2}|

and the Contextuality-by-Default criterion (Kujala, Dzhafarov, Larsson, PRL 115, 150401, 2015)
calls the system contextual only when S > 2 + Δ, i.e. ``cbd_margin = S − (2 + Δ) > 0``.
NCnet (Zhao, Wu, Hou 2026, arXiv 2603.04451) reports S of training outcomes across capacity.

Intervals are percentile bootstrap intervals over seeds: with common random numbers
(``paired=True``) a seed's four runs are resampled together; the resampling weights are drawn
once and shared by every extra dimension (width, step), so all extra dims cost one matrix product.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np
import xarray as xr
from scipy import stats

from gradcomp import _dims
from gradcomp._dims import ALICE, BOB, SEED, SETTINGS

__all__ = ["LABELS", "bootstrap_means", "estimate"]

#: sign of each C_ij in S
SIGNS = np.array([[1.0, 1.0], [1.0, -1.0]])

LABELS: dict[str, tuple[str, str]] = {
    "C": ("correlator ⟨ab⟩", "1"),
    "S": ("CHSH S = C11 + C12 + C21 − C22", "1"),
    "S_se": ("standard error of S", "1"),
    "S_lo": ("lower bootstrap bound of S", "1"),
    "S_hi": ("upper bootstrap bound of S", "1"),
    "s_odd": ("largest CHSH sign placement", "1"),
    "p_value": ("one-sided p-value of S > 2", "1"),
    "alice_mean": ("Alice's mean outcome", "1"),
    "bob_mean": ("Bob's mean outcome", "1"),
    "delta": ("signaling measure Δ", "1"),
    "delta_lo": ("lower bootstrap bound of Δ", "1"),
    "delta_hi": ("upper bootstrap bound of Δ", "1"),
    "cbd_margin": ("S − (2 + Δ) (contextual by default when > 0)", "1"),
    "remote_flip_fraction": ("share of seeds whose outcome flips with the remote setting", "1"),
    "alice_flip_fraction": ("share of seeds whose Alice outcome flips with Bob's setting", "1"),
    "bob_flip_fraction": ("share of seeds whose Bob outcome flips with Alice's setting", "1"),
    "n_seeds": ("number of seeds", "1"),
}


def _as_outcomes(x, name: str) -> xr.DataArray:
    if isinstance(x, xr.DataArray):
        da = x
    else:
        arr = np.asarray(x)
        if arr.ndim < 3:
            raise ValueError(
                f"{name} must have dims (seed, alice, bob, ...); got an array of shape {arr.shape}"
            )
        dims = (SEED, ALICE, BOB, *(f"dim_{i}" for i in range(arr.ndim - 3)))
        da = xr.DataArray(arr, dims=dims)
    missing = [d for d in (SEED, ALICE, BOB) if d not in da.dims]
    if missing:
        raise ValueError(f"{name} lacks the dimension(s) {missing}; it has {da.dims}")
    for d in (ALICE, BOB):
        if d not in da.coords:
            if da.sizes[d] != 2:
                raise ValueError(f"{name}: dimension {d!r} must have the two settings 1, 2")
            da = da.assign_coords({d: list(SETTINGS)})
        present = sorted(int(v) for v in da[d].values)
        if present != list(SETTINGS):
            raise ValueError(
                f"{name}: setting pair missing, {d!r} has settings {present}; need exactly 1 and 2"
            )
    extra = [d for d in da.dims if d not in (SEED, ALICE, BOB)]
    da = da.sel({ALICE: list(SETTINGS), BOB: list(SETTINGS)}).transpose(SEED, ALICE, BOB, *extra)
    values = da.values
    if not np.all(np.isin(values, (-1, 1))):
        bad = np.unique(values[~np.isin(values, (-1, 1))])[:5]
        raise ValueError(f"{name} must contain only −1 and +1 outcomes; found {bad.tolist()}")
    if da.sizes[SEED] < 2:
        raise ValueError(f"need at least two seeds to estimate S, got {da.sizes[SEED]}")
    return da


def bootstrap_means(
    x: np.ndarray, n_boot: int, rng: np.random.Generator, groups: int = 1
) -> np.ndarray:
    """Bootstrap replicates of the mean over axis 0, vectorised over every other axis.

    Each replicate draws N rows with replacement as multinomial counts ``w`` (n_boot, N); the
    replicate mean is ``w @ x / N`` (one matrix product for all trailing dims).

    Args:
        x: ``(N, groups, ...)`` data when ``groups > 1`` (each group resampled independently,
            e.g. setting pairs without common seeds), else ``(N, ...)``.
        n_boot: number of replicates.
        rng: random generator.
        groups: number of independently resampled groups along axis 1.

    Returns:
        ``(n_boot, ...)`` replicate means, same trailing shape as ``x[0]``.
    """
    n = x.shape[0]
    if groups == 1:
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)
        return (w @ x.reshape(n, -1) / n).reshape(n_boot, *x.shape[1:])
    out = np.empty((n_boot, *x.shape[1:]))
    for g in range(groups):
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)
        out[:, g] = (w @ x[:, g].reshape(n, -1) / n).reshape(n_boot, *x.shape[2:])
    return out


def _delta(mean_a: np.ndarray, mean_b: np.ndarray) -> np.ndarray:
    """Δ from marginal means shaped ``(..., alice, bob, extra...)`` at axes (-2-e, -1-e)."""
    return np.abs(mean_a[..., :, 0, :] - mean_a[..., :, 1, :]).sum(-2) + np.abs(
        mean_b[..., 0, :, :] - mean_b[..., 1, :, :]
    ).sum(-2)


def estimate(
    a,
    b,
    *,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    paired: bool = True,
) -> xr.Dataset:
    """CHSH statistics of outcomes ``a``, ``b`` with dims ``(seed, alice, bob, ...)``.

    Args:
        a: Alice's outcomes (−1/+1), a DataArray (or array in that dim order).
        b: Bob's outcomes, same dims and shape.
        confidence: level of the bootstrap intervals.
        n_boot: bootstrap replicates.
        seed: seed of the bootstrap's generator.
        paired: seeds are common to the four setting pairs (common random numbers): resample a
            seed's quadruple as a whole, use the per-seed S for the standard error, and report the
            remote flip fractions. With ``False`` each pair is resampled on its own and the flip
            fractions are NaN.

    Returns:
        Dataset with ``C``, ``alice_mean``, ``bob_mean`` (dims ``alice, bob, ...``) and ``S``,
        ``S_se``, ``S_lo``, ``S_hi``, ``s_odd``, ``p_value`` (one-sided, Student t on the standard
        error, H0: S ≤ 2), ``delta``, ``delta_lo``, ``delta_hi``, ``cbd_margin``,
        ``remote_flip_fraction``, ``alice_flip_fraction``, ``bob_flip_fraction``, ``n_seeds``
        (dims ``...``): the extra dims of the input.

    Raises:
        ValueError: values other than ±1, a missing setting pair, mismatched shapes, fewer than
            two seeds, or a bad ``confidence``/``n_boot``.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_boot < 10:
        raise ValueError(f"n_boot must be at least 10, got {n_boot}")
    da_a, da_b = _as_outcomes(a, "a"), _as_outcomes(b, "b")
    if da_a.dims != da_b.dims or da_a.shape != da_b.shape:
        raise ValueError(f"a and b must have the same dims and shape: {da_a.sizes} vs {da_b.sizes}")
    for d in da_a.dims:
        if d in da_a.coords and d in da_b.coords and not np.array_equal(da_a[d], da_b[d]):
            raise ValueError(f"a and b have different {d!r} coordinates")
    extra = list(da_a.dims[3:])
    ext_shape = da_a.shape[3:]
    n = da_a.sizes[SEED]
    A = da_a.values.astype(float).reshape(n, 2, 2, -1)
    B = da_b.values.astype(float).reshape(n, 2, 2, -1)
    ab = A * B
    C = ab.mean(0)  # (2, 2, E)
    S = np.einsum("ij,ije->e", SIGNS, C)
    total = C.sum((0, 1))
    s_odd = (total[None] - 2 * C.reshape(4, -1)).max(0)
    if paired:
        s_seed = np.einsum("ij,nije->ne", SIGNS, ab)
        S_se = s_seed.std(0, ddof=1) / np.sqrt(n)
    else:
        S_se = np.sqrt(ab.var(0, ddof=1).sum((0, 1)) / n)
    mean_a, mean_b = A.mean(0), B.mean(0)
    delta = _delta(mean_a, mean_b)

    rng = np.random.default_rng(seed)
    stacked = np.stack([ab, A, B], axis=-1)  # (N, 2, 2, E, 3)
    if paired:
        reps = bootstrap_means(stacked, n_boot, rng)
    else:
        reps = bootstrap_means(stacked.reshape(n, 4, -1), n_boot, rng, groups=4)
        reps = reps.reshape(n_boot, 2, 2, *stacked.shape[3:])
    S_b = np.einsum("ij,bije->be", SIGNS, reps[..., 0])
    delta_b = _delta(reps[..., 1], reps[..., 2])
    q = [(1 - confidence) / 2, (1 + confidence) / 2]
    S_lo, S_hi = np.quantile(S_b, q, axis=0)
    d_lo, d_hi = np.quantile(delta_b, q, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (S - 2) / S_se
    p = np.where(S_se > 0, stats.t.sf(np.nan_to_num(z), df=n - 1), np.where(S > 2, 0.0, 1.0))

    if paired:
        a_flip = (A[:, :, 0] != A[:, :, 1]).any(1)  # (N, E)
        b_flip = (B[:, 0, :] != B[:, 1, :]).any(1)
        fa, fb, fr = a_flip.mean(0), b_flip.mean(0), (a_flip | b_flip).mean(0)
    else:
        fa = fb = fr = np.full(S.shape, np.nan)

    coords: dict[Hashable, Any] = {d: da_a[d] for d in extra if d in da_a.coords}
    coords.update({ALICE: list(SETTINGS), BOB: list(SETTINGS)})

    def scalar(v: np.ndarray) -> tuple[list[Hashable], np.ndarray]:
        return extra, np.asarray(v).reshape(ext_shape)

    def pair(v: np.ndarray) -> tuple[list[Hashable], np.ndarray]:
        return [ALICE, BOB, *extra], np.asarray(v).reshape(2, 2, *ext_shape)

    ds = xr.Dataset(
        {
            "C": pair(C),
            "S": scalar(S),
            "S_se": scalar(S_se),
            "S_lo": scalar(S_lo),
            "S_hi": scalar(S_hi),
            "s_odd": scalar(s_odd),
            "p_value": scalar(p),
            "alice_mean": pair(mean_a),
            "bob_mean": pair(mean_b),
            "delta": scalar(delta),
            "delta_lo": scalar(d_lo),
            "delta_hi": scalar(d_hi),
            "cbd_margin": scalar(S - (2 + delta)),
            "remote_flip_fraction": scalar(fr),
            "alice_flip_fraction": scalar(fa),
            "bob_flip_fraction": scalar(fb),
            "n_seeds": scalar(np.full(S.shape, n, dtype=np.int64)),
        },
        coords=coords,
    )
    ds.attrs.update(
        {
            "confidence": float(confidence),
            "n_boot": int(n_boot),
            "interval": "percentile bootstrap over seeds"
            + (" (quadruples resampled together)" if paired else " (each pair on its own)"),
            "sign_convention": "S = C11 + C12 + C21 - C22",
            "paired": int(paired),
        }
    )
    return _dims.annotate(ds, LABELS)
