"""CHSH statistics of ±1 outcomes: S, signaling Δ and the CbD margin, with valid intervals.

Outcomes ``a`` (Alice's head) and ``b`` (Bob's head) have dimensions ``(seed, alice, bob, ...)``;
settings are 1 and 2. For setting pair (i, j), ``C_ij = ⟨a b⟩`` over seeds, and

    S = C11 + C12 + C21 − C22                                   (Clauser, Horne, Shimony, Holt 1969)

The four marginal shifts (signaling: a head's marginal depends on the remote setting) are

    d = (⟨A1⟩_B1 − ⟨A1⟩_B2, ⟨A2⟩_B1 − ⟨A2⟩_B2, ⟨B1⟩_A1 − ⟨B1⟩_A2, ⟨B2⟩_A1 − ⟨B2⟩_A2),
    Δ = Σ_t |d_t|,   s_odd = max_k |ΣC − 2 C_k|   (the eight sums with an odd number of minus signs)

and the Contextuality-by-Default criterion for the rank-4 cyclic system (Kujala, Dzhafarov,
Larsson, PRL 115, 150401, 2015) calls the system contextual iff ``s_odd > 2 + Δ``, i.e.
``cbd_margin = s_odd − (2 + Δ) > 0``. NCnet: Zhao, Wu, Hou 2026, arXiv 2603.04451.

Inference (seeds are the independent unit; with common random numbers a seed's four runs form one
observation). Every statistic is a mean over seeds of an integer per-seed value ``y`` of known
range, summed exactly from per-cell configuration counts (:mod:`gradcomp._cbd`,
:mod:`gradcomp._exact`):

* ``S`` interval and ``p_value`` (H1: S > 2): Student t on the per-seed S after Hall's (1992)
  skewness correction (nearly-solved cells are strongly skewed). Where the per-seed S has zero
  variance the exact worst-case bound over distributions on [−4, 4] is used instead
  (``S_degenerate``); ``S_trivial`` marks cells where every |C| = 1, so S is fixed by
  construction (all solved, or none) and says nothing about the heads. S = 2 and the sign of
  S − 2 are decided on exact integer sums, so round-off never yields p = 0.
* ``C_lo, C_hi``: Clopper–Pearson on the share ``p`` of seeds with ``ab = +1`` (``C = 2p − 1``).
* Shifts: under common random numbers ``d_t = 2 (p10 − p01)`` over discordant seeds.
  ``shift_p_value``: exact McNemar test (binomial test of ``n10`` of ``n10 + n01`` at 1/2);
  ``signaling_p_value``: Bonferroni–Holm over the four (FWER-exact, discrete-conservative).
  ``delta_lo, delta_hi``: projection of simultaneous intervals of the four shifts (each the
  difference of Clopper–Pearson bounds of p10 and p01, Bonferroni over the eight) onto Σ|·|.
  Valid where shifts are exactly 0, where a bootstrap of Σ|d̂_t| is not.
* Margin: ``Δ = max_σ σ·d`` over σ ∈ {±1}⁴, so ``margin = max_k min_σ ℓ_kσ`` with
  ``ℓ_kσ = L_k(C) − 2 − σ·d``, each a mean of a per-seed integer combination. The test of
  H1: margin > 0 is an intersection–union test over σ (``p_k = max_σ p_kσ``, as for S) and a
  union over the placements k, Bonferroni over the k not dominated in a pre-test at level β
  (two-step moment selection, Romano, Shaikh, Wolf 2014, Econometrica 82, 1979):
  ``cbd_p_value = β + |K̂| min_{k∈K̂} p_k`` with β = (1 − confidence)/20. ``cbd_margin_lo`` is the
  same construction as a lower bound at (1 − confidence)/2; ``cbd_margin_hi = max_k UCB(L_k) − 2 −
  Δ_lo`` with the error split between the two bounds.
* ``paired=False`` (the four pairs use different seeds): quadruples formed by seed index are
  i.i.d. draws of independent runs, so every procedure above stays valid (less powerful); the
  remote flip fractions are NaN.

NaN outcomes mark diverged or missing runs: a seed is dropped from a cell (an element of the
extra dims) if any of its eight outcomes there is NaN; ``n_seeds`` counts the seeds used and
``n_excluded`` those dropped. Cells with fewer than two usable seeds are NaN (reason in attrs).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np
import xarray as xr

from gradcomp import dims
from gradcomp._cbd import (
    CONFIGS,
    FLIPS,
    OUTCOMES,
    PLACEMENTS,
    S_SIGNS,
    Forms,
    delta_bounds,
    shift_intervals,
)
from gradcomp._cbd import margin as cbd_margin
from gradcomp._exact import clopper_pearson, mcnemar_exact, mean_bound, mean_pvalue
from gradcomp.dims import (
    ALICE,
    BOB,
    CBD_MARGIN,
    DELTA,
    HI,
    LO,
    MARGINAL,
    OUTCOME_A,
    OUTCOME_B,
    SE,
    SEED,
    SETTINGS,
    C,
    S,
)
from gradcomp.provenance import provenance

__all__ = ["LABELS", "SHIFT", "SHIFTS", "bootstrap_means", "estimate"]

#: dimension of the four marginal shifts (the variable ``shift`` holds their values, so the
#: dimension needs its own name)
SHIFT = MARGINAL
SHIFTS = ["A1: B1−B2", "A2: B1−B2", "B1: A1−A2", "B2: A1−A2"]

LABELS: dict[str, tuple[str, str]] = {
    C: ("correlator ⟨ab⟩", "1"),
    C + LO: ("lower Clopper–Pearson bound of C", "1"),
    C + HI: ("upper Clopper–Pearson bound of C", "1"),
    S: ("CHSH S = C11 + C12 + C21 − C22", "1"),
    S + SE: ("standard error of S", "1"),
    S + LO: ("lower bound of S (t, exact where degenerate)", "1"),
    S + HI: ("upper bound of S (t, exact where degenerate)", "1"),
    "S_degenerate": ("per-seed S has zero variance: exact bounds", "1"),
    "S_trivial": ("every |C| = 1: S fixed by construction", "1"),
    "s_odd": ("largest odd sign placement max_k |ΣC − 2C_k|", "1"),
    "p_value": ("one-sided p-value of S > 2", "1"),
    "alice_mean": ("Alice's mean outcome", "1"),
    "bob_mean": ("Bob's mean outcome", "1"),
    "shift": ("marginal shift with the remote setting", "1"),
    SHIFT: ("marginal and the remote settings it is compared across", "1"),
    "shift_p_value": ("exact McNemar p-value of the shift", "1"),
    "signaling_p_value": ("p-value of any signaling (Holm over shifts)", "1"),
    DELTA: ("signaling measure Δ = Σ|shift|", "1"),
    DELTA + LO: ("lower bound of Δ (simultaneous exact shifts)", "1"),
    DELTA + HI: ("upper bound of Δ (simultaneous exact shifts)", "1"),
    CBD_MARGIN: ("s_odd − (2 + Δ) (contextual by default when > 0)", "1"),
    CBD_MARGIN + LO: ("lower bound of the CbD margin", "1"),
    CBD_MARGIN + HI: ("upper bound of the CbD margin", "1"),
    "cbd_p_value": ("one-sided p-value of CbD margin > 0", "1"),
    "remote_flip_fraction": ("share of seeds whose outcome flips with the remote setting", "1"),
    "alice_flip_fraction": ("share of seeds whose Alice outcome flips with Bob's setting", "1"),
    "bob_flip_fraction": ("share of seeds whose Bob outcome flips with Alice's setting", "1"),
    "n_seeds": ("number of seeds used", "1"),
    "n_excluded": ("seeds dropped for a NaN outcome", "1"),
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
    values = da.values.astype(float)
    ok = np.isin(values, (-1, 1)) | np.isnan(values)
    if not ok.all():
        bad = np.unique(values[~ok])[:5]
        raise ValueError(
            f"{name} must contain only −1 and +1 outcomes (NaN for a missing run); "
            f"found {bad.tolist()}"
        )
    if da.sizes[SEED] < 2:
        raise ValueError(f"need at least two seeds to estimate S, got {da.sizes[SEED]}")
    return da.copy(data=values)


def bootstrap_means(
    x: np.ndarray, n_boot: int, rng: np.random.Generator, groups: int = 1
) -> np.ndarray:
    """Bootstrap replicates of the mean over axis 0, vectorised over every other axis.

    Each replicate draws N rows with replacement as multinomial counts ``w`` (n_boot, N); the
    replicate mean is ``w @ x / N`` (one matrix product for all trailing dims).

    Args:
        x: ``(N, groups, ...)`` data when ``groups > 1`` (each group resampled independently),
            else ``(N, ...)``.
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


def estimate(
    a,
    b,
    *,
    confidence: float = 0.95,
    n_boot: int | None = None,
    seed: int | None = None,
    paired: bool = True,
) -> xr.Dataset:
    """CHSH statistics of outcomes ``a``, ``b`` with dims ``(seed, alice, bob, ...)``.

    The formulas and methods are those of the module docstring (Kujala, Dzhafarov, Larsson, PRL
    115, 150401, 2015 for the CbD criterion); every interval is two-sided at ``confidence``.

    Args:
        a: Alice's outcomes (−1/+1, NaN for a diverged or missing run), a DataArray (or array in
            that dim order).
        b: Bob's outcomes, same dims and shape.
        confidence: level of the intervals.
        n_boot, seed: ignored (kept for compatibility: the intervals are Student t or exact and
            do not resample).
        paired: seeds are common to the four setting pairs (common random numbers). With
            ``False`` the pairs use different seeds; quadruples are formed by seed index (valid
            since they are independent) and the remote flip fractions are NaN.

    Returns:
        Dataset with ``C``, ``C_lo``, ``C_hi``, ``alice_mean``, ``bob_mean`` (dims ``alice, bob,
        ...``); ``shift``, ``shift_p_value`` (dims ``marginal, ...``, labelled by
        :data:`SHIFTS`); and ``S``, ``S_se``, ``S_lo``, ``S_hi``, ``S_degenerate``,
        ``S_trivial``, ``s_odd``, ``p_value`` (one-sided, H1: S > 2),
        ``delta``, ``delta_lo``, ``delta_hi``, ``signaling_p_value``, ``cbd_margin``,
        ``cbd_margin_lo``, ``cbd_margin_hi``, ``cbd_p_value`` (one-sided, H1: margin > 0),
        ``remote_flip_fraction``, ``alice_flip_fraction``, ``bob_flip_fraction``, ``n_seeds``,
        ``n_excluded`` (dims ``...``: the extra dims of the input).

    Raises:
        ValueError: values other than ±1 or NaN, a missing setting pair, mismatched shapes, fewer
            than two seeds, no cell with two usable seeds, or a bad ``confidence``.
    """
    del n_boot, seed
    if not 0.5 < confidence < 1:
        raise ValueError(f"confidence must be in (0.5, 1), got {confidence}")
    alpha = 1 - confidence
    da_a, da_b = _as_outcomes(a, OUTCOME_A), _as_outcomes(b, OUTCOME_B)
    if da_a.dims != da_b.dims or da_a.shape != da_b.shape:
        raise ValueError(f"a and b must have the same dims and shape: {da_a.sizes} vs {da_b.sizes}")
    for d in da_a.dims:
        if d in da_a.coords and d in da_b.coords and not np.array_equal(da_a[d], da_b[d]):
            raise ValueError(f"a and b have different {d!r} coordinates")
    extra = list(da_a.dims[3:])
    ext_shape = da_a.shape[3:]
    n_all = da_a.sizes[SEED]
    # (E, seed, 8) outcomes a11, a12, a21, a22, b11, b12, b21, b22: cells first
    out = np.concatenate(
        [np.moveaxis(da.values.reshape(n_all, 4, -1), -1, 0) for da in (da_a, da_b)], axis=-1
    )
    used = ~np.isnan(out).any(-1)  # (E, seed)
    n = used.sum(-1).astype(float)
    if not (n >= 2).any():
        raise ValueError(
            "no cell has two seeds whose four runs all have finite outcomes (NaN marks a "
            "diverged run): nothing to estimate"
        )
    valid = n >= 2
    # configuration index of each seed (the order of CONFIGS), 256 for a dropped seed
    code = np.where(
        used, (np.nan_to_num(out) > 0).astype(np.int64) @ (1 << np.arange(7, -1, -1)), 256
    )
    cells = code.shape[0]
    counts = np.bincount((code + 257 * np.arange(cells)[:, None]).ravel(), minlength=257 * cells)
    forms = Forms(counts.reshape(cells, 257)[:, :256].astype(float), n)

    with np.errstate(divide="ignore", invalid="ignore"):
        nan_if = np.where(valid, 1.0, np.nan)
        feat = forms.counts @ CONFIGS  # (E, 8) exact sums of the features
        xsum, dsum = feat[:, :4], feat[:, 4:]
        dsq = forms.counts @ CONFIGS[:, 4:] ** 2
        corr = xsum / n[:, None] * nan_if[:, None]
        c_lo, c_hi = clopper_pearson((xsum + n[:, None]) / 2, n[:, None], confidence)
        s1, s2, s3, lo, hi = (v[..., 0] for v in forms.sums(np.pad(S_SIGNS, (0, 4))[None]))
        s_mean = s1 / n * nan_if
        S_se = np.sqrt(np.maximum(n * s2 - s1 * s1, 0) / (n * n * (n - 1))) * nan_if
        S_lo = mean_bound(s1, s2, s3, n, alpha / 2, lo, hi, "lower")
        S_hi = mean_bound(s1, s2, s3, n, alpha / 2, lo, hi, "upper")
        p_value = mean_pvalue(s1, s2, s3, n, 2, lo)
        degenerate = valid & (n * s2 - s1 * s1 == 0)
        trivial = valid & (np.abs(xsum) == n[:, None]).all(-1)
        s_odd = np.abs(xsum @ PLACEMENTS.T).max(-1) / n * nan_if

        n10, n01 = (dsum / 2 + dsq / 4) / 2, (dsq / 4 - dsum / 2) / 2
        shift = dsum / n[:, None] * nan_if[:, None]
        delta = np.abs(shift).sum(-1)
        # s_odd − (2 + Δ) from its integer numerator: exactly 0 where it is 0 (no 4e-16)
        margin_value = (
            (np.abs(xsum @ PLACEMENTS.T).max(-1) - 2 * n - np.abs(dsum).sum(-1)) / n * nan_if
        )
        shift_p = np.where(valid[:, None], mcnemar_exact(n10, n01), np.nan)
        signaling_p = np.minimum(1.0, 4 * shift_p.min(-1))
        d_lo, d_hi = delta_bounds(*shift_intervals(n10, n01, n, alpha))
        margin = cbd_margin(forms, alpha, n10, n01)

        marg = forms.counts @ OUTCOMES / n[:, None] * nan_if[:, None]  # (E, 8)
        mean_a, mean_b = marg[:, :4], marg[:, 4:]
        if paired:
            fa, fb, fr = (forms.counts @ FLIPS / n[:, None] * nan_if[:, None]).T
        else:
            fa = fb = fr = np.full(n.shape, np.nan)

    coords: dict[Hashable, Any] = {d: da_a[d] for d in extra if d in da_a.coords}
    coords.update({ALICE: list(SETTINGS), BOB: list(SETTINGS), SHIFT: SHIFTS})

    def scalar(v: np.ndarray) -> tuple[list[Hashable], np.ndarray]:
        return extra, np.asarray(v).reshape(ext_shape)

    def pair(v: np.ndarray) -> tuple[list[Hashable], np.ndarray]:
        return [ALICE, BOB, *extra], np.moveaxis(np.asarray(v), 0, -1).reshape(2, 2, *ext_shape)

    def per_shift(v: np.ndarray) -> tuple[list[Hashable], np.ndarray]:
        return [SHIFT, *extra], np.moveaxis(np.asarray(v), 0, -1).reshape(4, *ext_shape)

    ds = xr.Dataset(
        {
            C: pair(corr),
            C + LO: pair(2 * c_lo - 1),
            C + HI: pair(2 * c_hi - 1),
            S: scalar(s_mean),
            S + SE: scalar(S_se),
            S + LO: scalar(S_lo),
            S + HI: scalar(S_hi),
            "S_degenerate": scalar(degenerate),
            "S_trivial": scalar(trivial),
            "s_odd": scalar(s_odd),
            "p_value": scalar(p_value),
            "alice_mean": pair(mean_a),
            "bob_mean": pair(mean_b),
            "shift": per_shift(shift),
            "shift_p_value": per_shift(shift_p),
            "signaling_p_value": scalar(signaling_p),
            DELTA: scalar(delta),
            DELTA + LO: scalar(d_lo * nan_if),
            DELTA + HI: scalar(d_hi * nan_if),
            CBD_MARGIN: scalar(margin_value),
            CBD_MARGIN + LO: scalar(margin[CBD_MARGIN + LO] * nan_if),
            CBD_MARGIN + HI: scalar(margin[CBD_MARGIN + HI] * nan_if),
            "cbd_p_value": scalar(margin["cbd_p_value"] * nan_if),
            "remote_flip_fraction": scalar(fr),
            "alice_flip_fraction": scalar(fa),
            "bob_flip_fraction": scalar(fb),
            "n_seeds": scalar(n.astype(np.int64)),
            "n_excluded": scalar((n_all - n).astype(np.int64)),
        },
        coords=coords,
    )
    n_bad = int((~valid).sum())
    config = {"confidence": confidence, "paired": paired}  # n_boot and seed are unused
    ds.attrs.update(provenance(config))
    ds.attrs.update(
        {
            "confidence": float(confidence),
            "interval": "S: Student t on the per-seed S with Hall's skewness correction, exact "
            "worst-case bound on [-4, 4] where it has zero variance (S_degenerate); "
            "C: Clopper-Pearson; delta: projection of "
            "simultaneous exact shift intervals (Bonferroni over 8 Clopper-Pearson bounds)",
            "margin_method": "s_odd - (2 + delta) (Kujala, Dzhafarov, Larsson 2015); test and "
            "lower bound: intersection-union over sigma of t/exact bounds of L_k - 2 - sigma.d, "
            f"Bonferroni over placements kept by a pre-test at beta = {alpha / 20:g} "
            "(Romano-Shaikh-Wolf two-step), p = beta + |K| min_k max_sigma p; upper bound: "
            "max_k UCB(L_k) - 2 - delta_lo, each at (1 - confidence)/4",
            "signaling_test": "exact McNemar per shift (binomial test of discordant seeds); "
            "combined: Holm (= 4 x smallest p), FWER-exact, discrete-conservative",
            "sign_convention": "S = C11 + C12 + C21 - C22",
            "paired": int(paired),
            "pairing": "common random numbers: a seed's four runs are one observation"
            if paired
            else "independent seeds per pair: quadruples formed by seed index",
            "missing": "a seed is dropped from a cell if any of its outcomes there is NaN",
        }
    )
    if n_bad:
        ds.attrs["note"] = (
            f"{n_bad} of {valid.size} cell(s) have fewer than two seeds with finite outcomes; "
            "their statistics are NaN"
        )
    return dims.annotate(ds, LABELS)
