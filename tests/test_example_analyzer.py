"""Worked example (docs/architecture.md): adding an analyzer.

An analyzer is a pure function from a recording or ensemble Dataset to a Dataset. It checks its
inputs with :func:`gradcomp.analyze.need`, computes with the statistics core
(:mod:`gradcomp.gram`) and the names of :mod:`gradcomp.dims`, and ends with
:func:`gradcomp.analyze.finish`, which labels the result and keeps the input's provenance.

Here: the share of seeds whose two task gradients conflict (cosine < 0), per setting pair, step
and layer, with its exact (Clopper-Pearson) 95 % interval: k conflicting seeds of n give
``[B(α/2; k, n − k + 1), B(1 − α/2; k + 1, n − k)]`` (B the beta quantile). It is checked against
``scipy.stats.binomtest`` in a loop, and its coverage by simulation.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from scipy import stats

from gradcomp import gram
from gradcomp.analyze import finish, need
from gradcomp.dims import ALICE, ALL, BOB, LAYER, SEED, STEP, TASK, TASK_J

LABELS = {
    "conflict_share": ("share of seeds whose task gradients conflict (cosine < 0)", "1"),
    "conflict_share_lo": ("lower end of the exact 95 % interval of conflict_share", "1"),
    "conflict_share_hi": ("upper end of the exact 95 % interval of conflict_share", "1"),
    "n_seeds": ("seeds with a defined cosine", "1"),
}


def conflict_share(ds: xr.Dataset, level: float = 0.95) -> xr.Dataset:
    """Share of seeds with a negative cosine between tasks 0 and 1, with its exact interval."""
    need(ds, ["gram"])
    cos = gram.cosine(ds["gram"]).isel({TASK: 0, TASK_J: 1}, drop=True)
    defined = cos.notnull()
    k, n = (cos < 0).where(defined).sum(SEED), defined.sum(SEED)
    a = (1 - level) / 2
    lo = xr.where(k > 0, stats.beta.ppf(a, k, n - k + 1), 0.0)
    hi = xr.where(k < n, stats.beta.ppf(1 - a, k + 1, n - k), 1.0)
    out = xr.Dataset(
        {"conflict_share": k / n, "conflict_share_lo": lo, "conflict_share_hi": hi, "n_seeds": n}
    )
    return finish(out, LABELS, "conflict_share", {"level": level}, source=ds)


def ensemble(p_conflict: float, n_seeds: int, rng: np.random.Generator) -> xr.Dataset:
    """A Gram ensemble whose seeds conflict independently with probability ``p_conflict``."""
    shape = (n_seeds, 2, 2, 3)  # seed, alice, bob, step
    g0 = rng.normal(size=(*shape, 4))
    sign = np.where(rng.random(shape) < p_conflict, -1.0, 1.0)[..., None]
    grads = np.stack([g0, sign * g0], -2)  # (..., task, d): cosine -1 or +1

    gm = np.einsum("...id,...jd->...ij", grads, grads)[..., None, :, :]
    ds = xr.Dataset(
        {"gram": ((SEED, ALICE, BOB, STEP, LAYER, TASK, TASK_J), gm)},
        coords={SEED: np.arange(n_seeds), ALICE: [1, 2], BOB: [1, 2], STEP: [0, 10, 20]},
    )
    return ds.assign_coords({LAYER: [ALL], TASK: ["A", "B"], TASK_J: ["A", "B"]})


def test_the_analyzer_equals_a_loop_of_binomtest() -> None:
    ds = ensemble(0.3, 25, np.random.default_rng(0)).assign_attrs(history="recorded")
    out = conflict_share(ds)
    cos = ds.gram[..., 0, 1] / np.sqrt(ds.gram[..., 0, 0] * ds.gram[..., 1, 1])
    for idx in np.ndindex(2, 2, 3):
        c = cos.values[(slice(None), *idx, 0)]
        k = int((c < 0).sum())
        ci = stats.binomtest(k, c.size).proportion_ci(0.95, method="exact")
        got = out.isel({ALICE: idx[0], BOB: idx[1], STEP: idx[2], LAYER: 0})
        assert float(got.conflict_share) == k / c.size
        np.testing.assert_allclose(float(got.conflict_share_lo), ci.low, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(float(got.conflict_share_hi), ci.high, rtol=1e-10, atol=1e-12)
    assert out.attrs["history"].startswith("recorded\n")  # the input's provenance is kept
    assert out.attrs["analysis"] == "conflict_share(level=0.95)"
    assert out.conflict_share.attrs["units"] == "1"


def test_the_interval_covers_the_true_share() -> None:
    # 100 ensembles x 12 cells, 20 seeds each: exact intervals cover at least their level
    rng = np.random.default_rng(1)
    outs = [conflict_share(ensemble(0.3, 20, rng)) for _ in range(100)]
    coverage = np.mean(
        [((o.conflict_share_lo <= 0.3) & (o.conflict_share_hi >= 0.3)).mean() for o in outs]
    )
    assert 0.93 <= coverage <= 1.0, coverage
