"""The default NCnet sweep's outcomes are the same with the C kernel, the torch backend and no C
compiler.

Both backends perform the same IEEE-754 operations in the same order (see the docstring of
:mod:`gradcomp.ncnet._fast`): a fixed ``exp`` written out in both instead of libm's or torch's,
fixed-order sums over patterns and units instead of torch reductions, no fused multiply-adds
(``-ffp-contract=off``), no ``-ffast-math``, no flushing of subnormals. So every traced array,
not only the outcomes, is bit-identical. Before this, the backends disagreed on 11 of the
928,000 traced outcomes of the default sweep (float32; 9 in float64), all at width 3, where
training is chaotic near the outcome threshold and last-bit differences grow into a different
outcome (seeds 88, 121, 190, 267 at the last step).
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from gradcomp.ncnet import NCnetConfig, plan, run
from gradcomp.ncnet._compiled import available
from gradcomp.ncnet._fast import train_fast

needs_cc = pytest.mark.skipif(not available(), reason="no C compiler for engine='c'")


def _outcomes(widths, seeds, config=None, **kw) -> xr.Dataset:
    ds = run(config or NCnetConfig(), widths, seeds, progress=False, **kw)
    return ds[["a", "b", "diverged"]].drop_attrs(deep=False)


@needs_cc
@pytest.mark.parametrize("unshared", [False, True], ids=["shared", "unshared-control"])
def test_default_sweep_subset_same_outcomes_with_and_without_a_compiler(
    monkeypatch: pytest.MonkeyPatch, unshared: bool
) -> None:
    config, widths, seeds = NCnetConfig(unshared=unshared), [2, 3, 4], 64
    c = _outcomes(widths, seeds, config, engine="c")
    torch_ = _outcomes(widths, seeds, config, engine="torch")
    xr.testing.assert_identical(c, torch_)
    monkeypatch.setenv("CC", "/nonexistent/cc")  # no compiler: "auto" takes torch
    assert not available()
    fallback = run(config, widths, seeds, progress=False)
    assert fallback.attrs["engine"] == "torch"
    xr.testing.assert_identical(fallback[["a", "b", "diverged"]].drop_attrs(deep=False), c)
    assert (c.a.isel(step=-1) == 1).any() and (c.a.isel(step=-1) == -1).any()


@needs_cc
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_formerly_mismatched_width_3_seeds_agree(dtype: str) -> None:
    # the default sweep's width-3 seeds whose last outcome differed between the backends
    config, seeds = NCnetConfig(dtype=dtype), [88, 121, 190, 267]
    c, t = (
        _outcomes([3], seeds, config, engine="c"),
        _outcomes([3], seeds, config, engine="torch"),
    )
    xr.testing.assert_identical(c, t)


@needs_cc
@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_traced_array_is_bit_identical(activation: str, dtype: str) -> None:
    # losses and Gram matrices are computed from the parameters: equal bits mean the training
    # step gave equal parameters; unshared heads, held-out patterns and 4 inputs (16 patterns)
    # cover the masked head update, zero pattern weights and a longer sum over patterns
    for config in (
        NCnetConfig(activation=activation, dtype=dtype, steps=150, trace_every=50, units=True),
        NCnetConfig(
            activation=activation,
            dtype=dtype,
            steps=150,
            trace_every=50,
            unshared=True,
            holdout=1,
            inputs=4,
            alice=("x1", "x1 ^ x4"),
            bob=("x2", "x2 ^ x3"),
            lr=1.5,
        ),
    ):
        c = train_fast(plan(config, [1, 3, 5], list(range(20))), engine="c")
        t = train_fast(plan(config, [1, 3, 5], list(range(20))), engine="torch")
        assert set(c) == set(t)
        for name in c:
            np.testing.assert_array_equal(c[name], t[name], err_msg=name)
