"""gradcomp.gram against naive float64 references (Python loops of dot products)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import xarray as xr

from gradcomp import gram as core
from gradcomp.dims import LAYER, STEP, TASK, TASK_J, UNIT


def naive_gram(vectors: list[list[float]]) -> np.ndarray:
    t = len(vectors)
    out = np.zeros((t, t))
    for i in range(t):
        for j in range(t):
            out[i, j] = math.fsum(a * b for a, b in zip(vectors[i], vectors[j], strict=True))
    return out


def naive_cosine(g: np.ndarray) -> np.ndarray:
    t = g.shape[0]
    out = np.full((t, t), np.nan)
    for i in range(t):
        for j in range(t):
            ni, nj = math.sqrt(max(g[i, i], 0.0)), math.sqrt(max(g[j, j], 0.0))
            if ni > 0 and nj > 0:
                out[i, j] = min(1.0, max(-1.0, g[i, j] / (ni * nj)))
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gram_of_a_stack_and_of_parameter_pieces(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64)  # [T, out, in]
    b = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    ref = naive_gram([[*w[t].flatten().tolist(), *b[t].tolist()] for t in range(3)])
    got = core.gram([w.to(dtype), b.to(dtype)])
    assert got.dtype == dtype and got.shape == (3, 3)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    np.testing.assert_allclose(got.double().numpy(), ref, rtol=tol, atol=tol)
    flat = torch.cat([w.flatten(1), b], 1).to(dtype)
    torch.testing.assert_close(core.gram(flat), got, rtol=0, atol=0)


def test_gram_accumulates_half_precision_in_float32() -> None:
    g = torch.full((2, 4096), 0.5, dtype=torch.bfloat16)
    out = core.gram(g)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), np.full((2, 2), 1024.0), rtol=0)


def test_batched_gram_matches_each_member() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 2, 3, 7, generator=gen, dtype=torch.float64)  # [K, T, *shape]
    got = core.gram([x], lead=2)
    assert got.shape == (5, 2, 2)
    for k in range(5):
        ref = naive_gram([x[k, t].flatten().tolist() for t in range(2)])
        np.testing.assert_allclose(got[k].numpy(), ref, rtol=1e-12, atol=1e-12)


def test_unit_gram_matches_the_rowwise_loop() -> None:
    gen = torch.Generator().manual_seed(2)
    rows = torch.randn(3, 4, 6, generator=gen, dtype=torch.float64)  # [T, U, D]
    got = core.unit_gram(rows)
    assert got.shape == (4, 3, 3)
    for u in range(4):
        ref = naive_gram([rows[t, u].tolist() for t in range(3)])
        np.testing.assert_allclose(got[u].numpy(), ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got.sum(0).numpy(), core.gram(rows.flatten(1)).numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match="T, U, D"):
        core.unit_gram(rows[0, 0])


def test_with_total_appends_the_sum_over_layers() -> None:
    g = torch.arange(12.0).reshape(3, 2, 2)
    out = core.with_total(g)
    assert out.shape == (4, 2, 2)
    torch.testing.assert_close(out[-1], g[0] + g[1] + g[2])
    torch.testing.assert_close(core.with_total(g[None], dim=1)[0], out)


def test_gram_needs_a_tensor() -> None:
    with pytest.raises(ValueError, match="at least one"):
        core.gram([])


def test_norm_and_cosine_match_the_loop_with_zero_and_negative_diagonals() -> None:
    rng = np.random.default_rng(3)
    v = rng.normal(size=(4, 9))
    v[2] = 0.0  # a task whose gradient is exactly zero: no direction, NaN cosines
    g = naive_gram(v.tolist())
    g[3, 3] = -1e-300  # a rounding-negative diagonal counts as a zero norm
    cos = core.cosine(g)
    np.testing.assert_allclose(cos, naive_cosine(g), rtol=1e-12, atol=1e-15)
    assert np.isnan(cos[2]).all() and np.isnan(cos[:, 2]).all() and np.isnan(cos[3]).all()
    np.testing.assert_allclose(
        core.grad_norm(g), [math.sqrt(max(g[i, i], 0.0)) for i in range(4)], rtol=1e-15
    )


def test_cosine_is_clipped_and_keeps_the_dtype() -> None:
    g = np.array([[1.0, 1.0 + 1e-6], [1.0 + 1e-6, 1.0]], dtype=np.float32)
    cos = core.cosine(g)
    assert cos.dtype == np.float32 and core.grad_norm(g).dtype == np.float32
    np.testing.assert_array_equal(cos, np.ones((2, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="T, T"):
        core.cosine(np.zeros((2, 3)))


def test_cosine_of_a_dataarray_is_the_numpy_cosine_and_stays_lazy() -> None:
    rng = np.random.default_rng(4)
    v = rng.normal(size=(6, 2, 3, 5))  # [step, layer, T, P]
    g = np.einsum("sltp,slup->sltu", v, v)
    da = xr.DataArray(
        g, dims=(STEP, LAYER, TASK, TASK_J), coords={TASK: list("abc"), TASK_J: list("abc")}
    )
    out = core.cosine(da.transpose(TASK, STEP, TASK_J, LAYER).chunk({STEP: 2}))
    assert out.chunks is not None and out.dims == (TASK, STEP, TASK_J, LAYER)
    np.testing.assert_array_equal(out.transpose(*da.dims).values, core.cosine(g))
    norm = core.grad_norm(da)
    assert norm.dims == (STEP, LAYER, TASK)
    np.testing.assert_array_equal(norm.values, core.grad_norm(g))
    with pytest.raises(ValueError, match="same tasks"):
        core.cosine(da.assign_coords({TASK_J: list("cba")}))


def test_gram_dataset_labels_every_variable() -> None:
    rng = np.random.default_rng(5)
    g = rng.normal(size=(3, 2, 2, 2))
    g = g @ np.swapaxes(g, -1, -2)  # positive semi-definite [step, layer, T, T]
    units = rng.normal(size=(3, 2, 4, 2, 2))
    ds = core.gram_dataset(
        g,
        (STEP,),
        {STEP: [0, 5, 10]},
        tasks=["x", "y"],
        layers=["trunk", "all"],
        units=units,
        data={"loss": ((STEP, TASK), rng.normal(size=(3, 2)))},
    )
    assert list(ds.data_vars) == ["loss", "gram", "grad_norm", "cosine", "unit_gram"]
    assert ds.cosine.dims == (STEP, LAYER, TASK, TASK_J)
    assert ds.grad_norm.dims == (STEP, LAYER, TASK)
    assert ds[UNIT].values.tolist() == [0, 1, 2, 3]
    for name in ("gram", "grad_norm", "cosine", "unit_gram"):
        assert ds[name].attrs["long_name"] and ds[name].attrs["units"] == "1"
    for s in range(3):
        for layer in range(2):
            np.testing.assert_allclose(
                ds.cosine[s, layer].values, naive_cosine(g[s, layer]), rtol=1e-12
            )
    with pytest.raises(ValueError, match="does not match"):
        core.gram_dataset(g, (), {}, tasks=["x", "y"], layers=["trunk", "all"])


def test_non_finite_grams_give_nan_without_warnings() -> None:
    g = np.array([[np.inf, 1.0], [1.0, 0.0]])  # a diverged run
    with np.errstate(all="raise"):
        cos = core.cosine(g)
    assert np.isnan(cos).all()
    np.testing.assert_array_equal(core.grad_norm(g), [np.inf, 0.0])
