"""The default NCnet sweep's outcomes with the C kernel, the torch backend and no C compiler.

Measured over the whole default sweep (widths 1-8, 500 seeds, 2000 steps, float32, 29 traced
steps): the backends disagree on 11 of the 928,000 traced outcomes (a: 5, b: 6), all at width 3,
setting pair (2, 2), from traced step 539 on; at the last step on 5 (b of seeds 88, 121, 190, 267,
a of seed 121). In float64: 9 (a: 3, b: 6; 2 at the last step), also all at width 3. The two
backends compute the same mathematics with different roundings (the C kernel: glibc's vectorised
``expf`` under ``-ffast-math``, tanh as 1 − 2/(e^{2z} + 1), the sums over patterns and units in
another order, fused multiply-adds under ``-march=native``; torch: its own vectorised ``exp``,
2σ(2z) − 1), and training at width 3 is chaotic near the outcome threshold, so last-bit
differences grow into a different outcome for a few seeds. Compiling the kernel with
``-O3 -ffp-contract=off`` (no ``-ffast-math``, no ``-march=native``) does not help (width 3,
500 seeds: 13 mismatches in float32 instead of 11, 7 in float64 instead of 9) and makes it 1.4-3×
slower; identity needs the same exp and the same order of every sum in both backends. The first
test pins identity where it holds; the second marks the known mismatch.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from gradcomp.ncnet import NCnetConfig, run
from gradcomp.ncnet._compiled import available

needs_cc = pytest.mark.skipif(not available(), reason="no C compiler for engine='c'")


def _outcomes(widths, seeds, **kw) -> xr.Dataset:
    ds = run(NCnetConfig(), widths, seeds, progress=False, **kw)
    return ds[["a", "b", "diverged"]].drop_attrs(deep=False)


@needs_cc
def test_default_sweep_subset_same_outcomes_with_and_without_a_compiler(monkeypatch) -> None:
    widths, seeds = [2, 3, 4], 64
    c = _outcomes(widths, seeds, engine="c")
    torch_ = _outcomes(widths, seeds, engine="torch")
    xr.testing.assert_identical(c, torch_)
    monkeypatch.setenv("CC", "/nonexistent/cc")  # no compiler: "auto" takes torch
    assert not available()
    fallback = run(NCnetConfig(), widths, seeds, progress=False)
    assert fallback.attrs["engine"] == "torch"
    xr.testing.assert_identical(fallback[["a", "b", "diverged"]].drop_attrs(deep=False), c)
    assert (c.a.isel(step=-1) == 1).any() and (c.a.isel(step=-1) == -1).any()


@needs_cc
@pytest.mark.xfail(strict=True, reason="known: chaotic width-3 runs differ across backends")
def test_known_width_3_mismatch() -> None:
    seeds = [88, 121]
    c, t = _outcomes([3], seeds, engine="c"), _outcomes([3], seeds, engine="torch")
    np.testing.assert_array_equal(c.b.isel(step=-1), t.b.isel(step=-1))
