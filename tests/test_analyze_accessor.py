"""The ``ds.gradcomp`` accessor reaches every analyzer and returns what the function returns."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import xarray as xr

import gradcomp.accessor  # noqa: F401  (registers ds.gradcomp)
from gradcomp.analyze import conflict, correlate, lagged, oscillation, sensing
from gradcomp.dims import ALICE, ALL, BOB, LAYER, SEED, STEP, TASK, TASK_J, WIDTH


def small_ensemble() -> xr.Dataset:
    g = np.random.default_rng(0)
    shape = (2, 8, 2, 2, 24)
    grads = g.normal(size=(*shape, 2, 3))
    gram = np.einsum("...id,...jd->...ij", grads, grads)[..., None, :, :]
    return xr.Dataset(
        {
            "loss": ((WIDTH, SEED, ALICE, BOB, STEP, TASK), g.normal(size=(*shape, 2)).cumsum(-2)),
            "gram": ((WIDTH, SEED, ALICE, BOB, STEP, LAYER, TASK, TASK_J), gram),
        },
        coords={
            WIDTH: [2, 3],
            SEED: np.arange(8),
            ALICE: [1, 2],
            BOB: [1, 2],
            STEP: np.arange(24),
            TASK: ["A", "B"],
            TASK_J: ["A", "B"],
            LAYER: [ALL],
        },
    )


def _identical(a: xr.Dataset, b: xr.Dataset) -> None:
    """Identical but for the CF ``history`` (a time stamp of each call)."""
    xr.testing.assert_identical(a.assign_attrs(history=None), b.assign_attrs(history=None))


def test_accessor_equals_functions() -> None:
    ds = small_ensemble()
    _identical(ds.gradcomp.conflict(window=4), conflict(ds, window=4))
    _identical(ds.gradcomp.oscillation(window=8), oscillation(ds, window=8))
    kw = {"n_permutations": 199, "n_boot": 99}
    _identical(ds.gradcomp.sensing(window=6, **kw), sensing(ds, window=6, **kw))
    merged = xr.merge([ds, conflict(ds, window=4)[["conflict_frequency"]]], compat="override")
    merged["freq_ab"] = merged["conflict_frequency"].sel({TASK: "A", TASK_J: "B", LAYER: ALL})
    merged["loss_a"] = merged["loss"].sel({TASK: "A"})
    via = merged.gradcomp.correlate("freq_ab", "loss_a", [SEED, STEP], control=None, n_boot=99)
    ref = correlate(merged["freq_ab"], merged["loss_a"], [SEED, STEP], n_boot=99)
    _identical(via, ref)
    via = merged.gradcomp.lagged("freq_ab", "loss_a", max_lag=2, n_boot=99)
    _identical(via, lagged(merged["freq_ab"], merged["loss_a"], max_lag=2, n_boot=99))


def test_accessor_module_imports_only_xarray_and_numpy() -> None:
    code = (
        "import sys, gradcomp.accessor; "
        "bad = [m for m in ('scipy', 'torch', 'gradcomp.analyze') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
