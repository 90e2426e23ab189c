"""Implicit sensing: how well one head's own local trace reveals the other head's setting.

For head A (own setting x = alice, remote setting y = bob) and each own setting x, each seed k
of an ensemble gives two traces of A's *own* loss (or any per-task variable): one per remote
setting y. Within non-overlapping windows of ``window`` traced steps, a decoder reads y from the
trace values in the window (leave-one-seed-out nearest centroid, see ``_decoder``); head B is
treated the same way with the roles swapped. Per (head, own setting, window):

- ``accuracy``: cross-validated decoding accuracy (chance 0.5), with a BCa bootstrap interval
  over seeds (``scipy.stats.bootstrap``; each seed's two predictions resampled together; Efron
  1987: the percentile interval under-covered, 0.915 at 16 seeds). When every seed has the
  same accuracy v (e.g. all decoded perfectly) a bootstrap interval would have zero width;
  then ``accuracy_degenerate`` is True and the bounds are exact: [v - q v, v + q (1 - v)]
  with q = 1 - (alpha / 2)^(1 / n) the Clopper-Pearson bound on the share of seeds that could
  differ (for v = 1 the Clopper-Pearson interval of the share of perfect seeds);
- ``p_value``: permutation test of decoding above chance. Its statistic is the decoder's mean
  signed margin m (the leave-one-seed-out decision score, signed by the true label; accuracy
  is the share of positive margins): continuous, so the test has its nominal size, where the
  accuracy's few values and ties made it conservative. The null swaps the remote labels within
  random seeds (exchangeable under "the trace ignores the remote setting"),
  p = (1 + #{m* >= m}) / (1 + P); ``null_hi``: the null's (1 - alpha) quantile of the
  accuracy; ``q_value``: Benjamini-Hochberg q-values over the windows of each (head, own
  setting) curve (:func:`gradcomp.analyze.qvalues`);
- ``p_adjusted``: the p-value adjusted for scanning all windows of a curve by the max
  statistic (Westfall & Young 1993): p_adj(w) = (1 + #{max_w' m*(w') >= m(w)}) / (1 + P),
  the same label flips acting on every window;
- ``information``: plug-in mutual information I(y; decoded y) in bits of the decoder's
  confusion table, with a seed-bootstrap interval (exact bounds as for the accuracy when every
  seed's table is the same, ``_agreeing_information``).
  It is biased upward (about 1 / (2 N ln 2) bits, ``information_bias``; ``information_null``,
  the permutation null's mean, is the empirical bias): compare against those;
- ``onset``: the first window end step whose ``p_adjusted`` is below alpha with accuracy above
  0.5: "reliably above chance" with the family-wise error over windows controlled at alpha
  (a null of no sensing gives a false onset with probability <= alpha). NaN if never.

With common random numbers a seed's two traces are identical until the remote setting has acted
through the shared weights, so accuracy is exactly 0.5 there (and everywhere in an unshared
control). Zhao, Wu, Hou (2026, arXiv 2603.04451) say a head "implicitly senses" the other head's
task through oscillations of its own local loss; this measures it.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from scipy import stats

from gradcomp.analyze._checks import finish, need, need_dims, need_length, need_seeds
from gradcomp.analyze._decoder import loso_scores
from gradcomp.analyze._info import confusion_mi, miller_madow_bias
from gradcomp.analyze.multiplicity import qvalues
from gradcomp.dims import ALICE, BOB, LOSS, OWN, SEED, STEP, TASK, bounded

__all__ = ["sensing"]

#: head -> (its own setting dim, the remote setting dim)
HEADS: dict[str, tuple[str, str]] = {"A": (ALICE, BOB), "B": (BOB, ALICE)}
MIN_SEEDS = 5

LABELS: dict[str, tuple[str, str]] = {
    **bounded("accuracy", "decoding accuracy of the remote setting", short="decoding accuracy"),
    "accuracy_degenerate": ("all seeds decoded alike (exact bounds)", "1"),
    "null_hi": ("decoding accuracy, permutation-null upper quantile", "1"),
    "p_value": ("permutation p-value of decoding above chance (margin)", "1"),
    **bounded(
        "information", "information about the remote setting (plug-in)", "bit", short="information"
    ),
    "information_null": ("information under the permutation null (mean)", "bit"),
    "information_bias": ("first-order plug-in bias of the information", "bit"),
    "p_adjusted": ("p-value adjusted over windows (max statistic)", "1"),
    "q_value": ("q-value over windows (Benjamini-Hochberg)", "1"),
    "onset": ("sensing onset: training step of the first window reliably above chance", "1"),
    "n_seeds": ("seeds", "1"),
    OWN: ("own setting", "1"),
}


def _interval(
    samples: tuple[np.ndarray, ...],
    statistic,
    alpha: float,
    n_boot: int,
    rng: np.random.Generator,
    method: str = "percentile",
) -> tuple[float, float]:
    """Bootstrap interval over seeds (paired samples); NaN if all seeds agree (see
    :func:`_agreeing_bounds` for the accuracy)."""
    if all(np.ptp(s) == 0 for s in samples):
        return np.nan, np.nan
    ci = stats.bootstrap(
        samples,
        statistic,
        paired=True,
        vectorized=True,
        n_resamples=n_boot,
        method=method,
        confidence_level=1 - alpha,
        random_state=rng,
    ).confidence_interval
    return float(ci.low), float(ci.high)


def _agreeing_bounds(value: float, n: int, alpha: float) -> tuple[float, float]:
    """Exact bounds of a mean in [0, 1] when all ``n`` seeds gave the same ``value``.

    The share of seeds that would differ from ``value`` is at most
    q = 1 - (alpha / 2)^(1 / n), the Clopper-Pearson upper bound for 0 of n (Clopper & Pearson
    1934; "the rule of three" for alpha = 0.1); such a seed lies anywhere in [0, 1], so the mean
    lies in [value - q value, value + q (1 - value)]. For perfect decoding (value 1) this is
    the Clopper-Pearson interval [(alpha / 2)^(1 / n), 1] of the share of perfect seeds.
    """
    q = 1.0 - (alpha / 2) ** (1.0 / n)
    return value - q * value, value + q * (1.0 - value)


#: the four per-seed confusion tables [true, predicted] of two predictions (one per label)
_SEED_TABLES = np.array(
    [[[a == 0, a == 1], [b == 0, b == 1]] for a in (0, 1) for b in (0, 1)], float
)
_GRID = (
    np.array([w for w in np.ndindex(21, 21, 21, 21) if sum(w) == 20], float) / 20.0
)  # mixture weights on the four tables, step 0.05


def _agreeing_information(table: np.ndarray, n: int, alpha: float) -> tuple[float, float]:
    """Bounds of the information when every seed gave the same confusion ``table`` (2 x 2).

    As in :func:`_agreeing_bounds`, a share of at most q = 1 - (alpha / 2)^(1 / n) of seeds
    could give any per-seed table; the bounds are the least and largest information of
    (1 - q) table + q S over mixtures S of the four possible per-seed tables (a grid of step
    0.05, which includes S = table).
    """
    q = 1.0 - (alpha / 2) ** (1.0 / n)
    mixed = (1 - q) * table / table.sum() + q * np.einsum("gk,kij->gij", _GRID, _SEED_TABLES) / 2
    mi = confusion_mi(mixed)
    return float(mi.min()), float(mi.max())


def _mi_of_counts(*cells: np.ndarray, axis: int = -1) -> np.ndarray:
    """MI of the summed per-seed confusion cells (c00, c01, c10, c11)."""
    sums = np.stack([np.sum(c, axis=axis) for c in cells], -1)
    return confusion_mi(sums.reshape(*sums.shape[:-1], 2, 2))


def _confusion(correct: np.ndarray, flips: np.ndarray) -> np.ndarray:
    """Counts [true, predicted] summed over the trailing axes of ``correct`` (..., 2, 2).

    ``correct`` is (P, n, 2) (summed over seeds and remote settings) or (n, 2) with a
    (1, n) ``flips`` (counts per seed, summed over the two remote settings).
    """
    truth = (np.arange(2) ^ flips[..., None]).reshape(correct.shape)
    pred = np.where(correct, truth, 1 - truth)
    axes = tuple(range(1 if correct.ndim == 3 else correct.ndim - 1, correct.ndim))
    n11 = (truth & pred).sum(axes)
    n1_ = truth.sum(axes)
    n_1 = pred.sum(axes)
    total = np.prod([correct.shape[a] for a in axes])
    table = np.stack([total - n1_ - n_1 + n11, n_1 - n11, n1_ - n11, n11], -1)
    return table.reshape(*table.shape[:-1], 2, 2)


def _cell(
    x: np.ndarray, flips: np.ndarray, alpha: float, n_boot: int, rng: np.random.Generator
) -> tuple[dict[str, float], np.ndarray]:
    """Statistics of one (head, own setting, window) from features ``x`` (n, 2, W), and the
    test statistic (the mean signed margin) under every labelling (observed first)."""
    score, truth = loso_scores(x, flips)  # (P, n, 2)
    correct = (score > 0).astype(int) == truth
    acc = correct.mean((1, 2))
    # the test statistic: the mean signed margin (continuous, so the permutation test has its
    # nominal size; the accuracy itself takes only 2n + 1 values and ties would make it
    # conservative)
    margin = np.where(truth == 1, score, -score).mean((1, 2))
    info = confusion_mi(_confusion(correct, flips))  # per labelling
    per_seed_counts = _confusion(correct[0], flips[:1])  # (n, 2, 2)
    per_seed = correct[0].mean(1)
    degenerate = bool(np.ptp(per_seed) == 0)
    if degenerate:
        lo, hi = _agreeing_bounds(float(per_seed[0]), per_seed.size, alpha)
    else:
        lo, hi = _interval((per_seed,), np.mean, alpha, n_boot, rng, method="BCa")
    if np.all(per_seed_counts == per_seed_counts[:1]):
        ilo, ihi = _agreeing_information(per_seed_counts[0], per_seed.size, alpha)
    else:
        cells = tuple(per_seed_counts.reshape(-1, 4).T)
        ilo, ihi = _interval(cells, _mi_of_counts, alpha, n_boot, rng)
    out = {
        "accuracy": float(acc[0]),
        "accuracy_lo": lo,
        "accuracy_hi": hi,
        "accuracy_degenerate": float(degenerate),
        "null_hi": float(np.quantile(acc[1:], 1 - alpha)),
        "p_value": float((1.0 + np.sum(margin[1:] >= margin[0])) / margin.size),
        "information": float(info[0]),
        "information_lo": ilo,
        "information_hi": ihi,
        "information_null": float(info[1:].mean()),
    }
    return out, margin


def _features(values: np.ndarray, head: str) -> list[np.ndarray]:
    """Per own setting, features (seed, remote, W) from ``values`` (seed, alice, bob, W)."""
    if HEADS[head][0] == ALICE:
        return [values[:, own] for own in range(2)]
    return [values[:, :, own] for own in range(2)]


def sensing(
    ds: xr.Dataset,
    variable: str = LOSS,
    window: int = 10,
    n_permutations: int = 999,
    alpha: float = 0.05,
    n_boot: int = 999,
    random_state: int = 0,
) -> xr.Dataset:
    """Decode the remote head's setting from each head's own trace, per window of training.

    Args:
        ds: an ensemble with ``variable(..., seed, alice, bob, step, task)`` for tasks "A"
            and "B" (Alice's and Bob's heads); extra dims (e.g. width) are carried through.
            One window of the trace is loaded at a time (dask-backed inputs stay lazy until
            then).
        variable: the local per-head trace to decode from: ``"loss"`` or any per-task
            variable, e.g. ``osc_amplitude`` merged from :func:`oscillation`.
        window: traced steps per (non-overlapping) window; the window's step coordinate is
            its last step. Trailing steps that do not fill a window are dropped.
        n_permutations: label flips of the permutation null.
        alpha: 1 - confidence level of the intervals, and the test level (of ``p_adjusted``
            for the onset).
        n_boot: bootstrap resamples of the intervals.
        random_state: seeds the permutations and the bootstrap.

    Returns:
        Dataset over (extra dims, ``task``, ``own``, ``step``) with ``accuracy`` (+ ``_lo``,
        ``_hi``, ``_degenerate``), ``null_hi``, ``p_value``, ``p_adjusted``, ``q_value``,
        ``information`` (+ ``_lo``, ``_hi``), ``information_null``, ``information_bias``;
        ``onset`` over (extra dims, task, own); ``n_seeds``. ``attrs["undefined_reason"]``
        counts the degenerate cells.

    Raises:
        ValueError: a missing variable, fewer than 5 seeds, a trace shorter than one window,
            too few permutations to reach alpha, or non-finite trace values.
    """
    need(ds, [variable])
    da = ds[variable]
    need_dims(da, (SEED, ALICE, BOB, STEP, TASK), variable)
    need_seeds(da, MIN_SEEDS, "implicit sensing (decoding across seeds)")
    need_length(da, STEP, window, f"a sensing window of {window} steps")
    heads = [t for t in da[TASK].values.tolist() if t in HEADS]
    if not heads:
        raise ValueError(
            f"{variable!r} has tasks {da[TASK].values.tolist()}; sensing needs the "
            "NCnet heads 'A' (Alice) and/or 'B' (Bob)"
        )
    n_windows = da.sizes[STEP] // window
    if 1.0 / (n_permutations + 1) >= alpha:
        raise ValueError(
            f"n_permutations={n_permutations} cannot reach p < alpha = {alpha:.2g}; use at "
            f"least {int(np.ceil(1 / alpha))} permutations"
        )
    extra = [d for d in da.dims if d not in (SEED, ALICE, BOB, STEP, TASK)]
    da = da.sel({ALICE: [1, 2], BOB: [1, 2], TASK: heads}).transpose(
        *extra, TASK, SEED, ALICE, BOB, STEP
    )
    extra_shape = tuple(da.sizes[d] for d in extra)
    n_cells = int(np.prod(extra_shape, dtype=int))
    n = da.sizes[SEED]
    rng = np.random.default_rng(random_state)
    flips = rng.integers(0, 2, size=(n_permutations + 1, n))
    flips[0] = 0
    names = list(LABELS)[:10]
    out = {k: np.full((n_cells, len(heads), 2, n_windows), np.nan) for k in names}
    null = np.empty((n_cells, len(heads), 2, n_windows, n_permutations + 1))
    for w in range(n_windows):
        block = np.asarray(da.isel({STEP: slice(w * window, (w + 1) * window)}).values)
        if not np.all(np.isfinite(block)):
            raise ValueError(
                f"{variable!r} has non-finite values in window {w}; drop diverged runs"
            )
        block = block.reshape(n_cells, len(heads), n, 2, 2, window).astype(float)
        for c in range(n_cells):
            for h, head in enumerate(heads):
                for own, x in enumerate(_features(block[c, h], head)):
                    cell, null[c, h, own, w] = _cell(x, flips, alpha, n_boot, rng)
                    for k, v in cell.items():
                        out[k][c, h, own, w] = v
    # Westfall-Young max-statistic adjustment over the windows of each curve: the same label
    # flips act on every window, so the maximum over windows has the right joint null
    top = null[..., 1:].max(-2)  # (cells, heads, own, P)
    exceed = (top[..., None, :] >= null[..., :1]).sum(-1)
    out["p_adjusted"] = (1.0 + exceed) / (n_permutations + 1)
    steps = da[STEP].values[window - 1 : n_windows * window : window]
    dims = (*extra, TASK, OWN, STEP)
    coords = {**{d: da[d].values for d in extra}, TASK: heads, OWN: [1, 2], STEP: steps}
    res = xr.Dataset(
        {k: (dims, v.reshape(*extra_shape, len(heads), 2, n_windows)) for k, v in out.items()},
        coords=coords,
    )
    res["information_bias"] = xr.full_like(res["information"], float(miller_madow_bias(2 * n)))
    res["accuracy_degenerate"] = res["accuracy_degenerate"].astype(bool)
    res["q_value"] = qvalues(res["p_value"], dims=STEP)
    reliable = (res["p_adjusted"] < alpha) & (res["accuracy"] > 0.5)
    first = reliable.argmax(STEP)
    res["onset"] = res[STEP][first].drop_vars(STEP).where(reliable.any(STEP))
    res["n_seeds"] = n
    config = {
        "variable": variable,
        "window": window,
        "n_permutations": n_permutations,
        "alpha": alpha,
        "n_boot": n_boot,
        "random_state": random_state,
        "method": "leave-one-seed-out decoder; label-flip permutations; max-statistic onset",
    }
    n_degenerate = int(res["accuracy_degenerate"].sum())
    if n_degenerate:
        config["undefined_reason"] = (
            f"{n_degenerate} cells decode every seed alike: accuracy bounds are exact "
            "(Clopper-Pearson on the share of agreeing seeds)"
        )
    return finish(res, LABELS, "sensing", config, source=ds)
