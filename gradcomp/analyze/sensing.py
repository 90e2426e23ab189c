"""Implicit sensing: how well one head's own local trace reveals the other head's setting.

For head A (own setting x = alice, remote setting y = bob) and each own setting x, each seed k
of an ensemble gives two traces of A's *own* loss (or any per-task variable): one per remote
setting y. Within non-overlapping windows of ``window`` traced steps, a decoder reads y from the
trace values in the window (leave-one-seed-out nearest centroid, see ``_decoder``); head B is
treated the same way with the roles swapped. Per (head, own setting, window):

- ``accuracy``: cross-validated decoding accuracy (chance 0.5), with a percentile bootstrap
  interval over seeds (``scipy.stats.bootstrap``; each seed's two predictions resampled together);
- ``p_value``: permutation test; the null swaps the remote labels within random seeds
  (exchangeable under "the trace ignores the remote setting"), p = (1 + #{acc* >= acc}) / (1 + P);
  ``null_hi``: the null's (1 - alpha) quantile;
- ``information``: plug-in mutual information I(y; decoded y) in bits of the decoder's
  confusion table, with a seed-bootstrap interval. It is biased upward (about 1 / (2 N ln 2)
  bits, ``information_bias``; ``information_null``, the permutation null's mean, is the
  empirical bias): compare against those;
- ``onset``: the first window end step whose p-value is below alpha / (number of windows)
  (Bonferroni over windows) with accuracy above 0.5: "reliably above chance" in the project's
  reading. NaN if never.

With common random numbers a seed's two traces are identical until the remote setting has acted
through the shared weights, so accuracy is exactly 0.5 there (and everywhere in an unshared
control). Zhao, Wu, Hou (2026, arXiv 2603.04451) say a head "implicitly senses" the other head's
task through oscillations of its own local loss; this measures it.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from scipy import stats

from gradcomp._dims import ALICE, BOB, OWN, SEED, STEP, TASK
from gradcomp.analyze._checks import finish, need, need_dims, need_length, need_seeds
from gradcomp.analyze._decoder import loso_correct
from gradcomp.analyze._info import confusion_mi, miller_madow_bias

__all__ = ["sensing"]

#: head -> (its own setting dim, the remote setting dim)
HEADS: dict[str, tuple[str, str]] = {"A": (ALICE, BOB), "B": (BOB, ALICE)}
MIN_SEEDS = 5

LABELS: dict[str, tuple[str, str]] = {
    "accuracy": ("decoding accuracy of the remote setting", "1"),
    "accuracy_lo": ("decoding accuracy, lower bound", "1"),
    "accuracy_hi": ("decoding accuracy, upper bound", "1"),
    "null_hi": ("decoding accuracy, permutation-null upper quantile", "1"),
    "p_value": ("permutation p-value of decoding above chance", "1"),
    "information": ("information about the remote setting (plug-in)", "bit"),
    "information_lo": ("information, lower bound", "bit"),
    "information_hi": ("information, upper bound", "bit"),
    "information_null": ("information under the permutation null (mean)", "bit"),
    "information_bias": ("first-order plug-in bias of the information", "bit"),
    "onset": ("sensing onset (first window reliably above chance)", "step"),
    "n_seeds": ("seeds", "1"),
    OWN: ("own setting", "1"),
}


def _interval(
    samples: tuple[np.ndarray, ...], statistic, alpha: float, n_boot: int, rng: np.random.Generator
) -> tuple[float, float]:
    """Percentile bootstrap over seeds (paired samples); a point interval if all seeds agree."""
    if all(np.ptp(s) == 0 for s in samples):
        value = float(statistic(*(s[None] for s in samples), axis=-1)[0])
        return value, value
    ci = stats.bootstrap(
        samples,
        statistic,
        paired=True,
        vectorized=True,
        n_resamples=n_boot,
        method="percentile",
        confidence_level=1 - alpha,
        random_state=rng,
    ).confidence_interval
    return float(ci.low), float(ci.high)


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
) -> dict[str, float]:
    """All statistics of one (head, own setting, window) from features ``x`` (n, 2, W)."""
    correct = loso_correct(x, flips)  # (P, n, 2)
    acc = correct.mean((1, 2))
    info = confusion_mi(_confusion(correct, flips))  # per labelling
    per_seed_counts = _confusion(correct[0], flips[:1])  # (n, 2, 2)
    per_seed = correct[0].mean(1)
    lo, hi = _interval((per_seed,), np.mean, alpha, n_boot, rng)
    ilo, ihi = _interval(tuple(per_seed_counts.reshape(-1, 4).T), _mi_of_counts, alpha, n_boot, rng)
    return {
        "accuracy": float(acc[0]),
        "accuracy_lo": lo,
        "accuracy_hi": hi,
        "null_hi": float(np.quantile(acc[1:], 1 - alpha)),
        "p_value": float((1.0 + np.sum(acc[1:] >= acc[0])) / acc.size),
        "information": float(info[0]),
        "information_lo": ilo,
        "information_hi": ihi,
        "information_null": float(info[1:].mean()),
    }


def _features(values: np.ndarray, head: str) -> list[np.ndarray]:
    """Per own setting, features (seed, remote, W) from ``values`` (seed, alice, bob, W)."""
    if HEADS[head][0] == ALICE:
        return [values[:, own] for own in range(2)]
    return [values[:, :, own] for own in range(2)]


def sensing(
    ds: xr.Dataset,
    variable: str = "loss",
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
        alpha: 1 - confidence level of the intervals, and the test level (Bonferroni over
            windows for the onset).
        n_boot: bootstrap resamples of the intervals.
        random_state: seeds the permutations and the bootstrap.

    Returns:
        Dataset over (extra dims, ``task``, ``own``, ``step``) with ``accuracy`` (+ ``_lo``,
        ``_hi``), ``null_hi``, ``p_value``, ``information`` (+ ``_lo``, ``_hi``),
        ``information_null``, ``information_bias``; ``onset`` over (extra dims, task, own);
        ``n_seeds``.

    Raises:
        ValueError: a missing variable, fewer than 5 seeds, a trace shorter than one window,
            too few permutations for the Bonferroni onset test, or non-finite trace values.
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
    if 1.0 / (n_permutations + 1) >= alpha / n_windows:
        raise ValueError(
            f"n_permutations={n_permutations} cannot reach p < alpha / windows = "
            f"{alpha / n_windows:.2g}; use at least {int(np.ceil(n_windows / alpha))} permutations"
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
    names = list(LABELS)[:9]
    out = {k: np.full((n_cells, len(heads), 2, n_windows), np.nan) for k in names}
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
                    for k, v in _cell(x, flips, alpha, n_boot, rng).items():
                        out[k][c, h, own, w] = v
    steps = da[STEP].values[window - 1 : n_windows * window : window]
    dims = (*extra, TASK, OWN, STEP)
    coords = {**{d: da[d].values for d in extra}, TASK: heads, OWN: [1, 2], STEP: steps}
    res = xr.Dataset(
        {k: (dims, v.reshape(*extra_shape, len(heads), 2, n_windows)) for k, v in out.items()},
        coords=coords,
    )
    res["information_bias"] = xr.full_like(res["information"], float(miller_madow_bias(2 * n)))
    reliable = (res["p_value"] < alpha / n_windows) & (res["accuracy"] > 0.5)
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
    }
    return finish(res, LABELS, "sensing", config)
