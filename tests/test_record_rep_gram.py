"""``rep_gram``: the Gram of the per-task gradients at the shared representation (strategy
``"features"``) equals a naive per-task ``autograd.grad`` with respect to the hooked trunk output
(float64), and recording it changes none of the parameter statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from torch import Tensor, nn

import gradcomp
from gradcomp.recorder import NonfiniteLossWarning

RTOL, ATOL = 1e-10, 1e-13
TASKS = ["a", "b", "c"]


class TwoOutputTrunk(nn.Module):
    """A trunk with two outputs (both passed as ``features=``)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, 7), nn.Tanh())
        self.left = nn.Linear(7, 4)
        self.right = nn.Linear(7, 3)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = self.body(x)
        return torch.tanh(self.left(z)), torch.sin(self.right(z))


def _model(two: bool) -> nn.Module:
    torch.manual_seed(0)
    trunk: nn.Module = (
        TwoOutputTrunk() if two else nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 6))
    )
    width = 7 if two else 6
    heads = nn.ModuleDict({t: nn.Sequential(nn.Linear(width, 3), nn.Tanh()) for t in TASKS})
    return nn.ModuleDict({"trunk": trunk, "heads": heads}).double()


def _losses(model: nn.Module, h: Tensor | tuple[Tensor, Tensor], x: Tensor) -> dict[str, Tensor]:
    """Task t reads rows ``t::2`` for t = a, all rows otherwise (rows shared and not)."""
    z = torch.cat(h, dim=1) if isinstance(h, tuple) else h
    out = {}
    for i, t in enumerate(TASKS):
        rows = slice(0, None, 2) if t == "a" else slice(None)
        y = model["heads"][t](z[rows])
        out[t] = ((y - 0.1 * (i + 1)) ** 2).mean() * (i + 1)
    return out


def _reference(model: nn.Module, x: Tensor) -> np.ndarray:
    """Σ_k Σ_rows ⟨∂L_s/∂h_k, ∂L_t/∂h_k⟩ from a forward hook on the trunk and one
    ``autograd.grad`` per task."""
    captured: list[tuple[Tensor, ...]] = []

    def hook(_m: nn.Module, _inp: object, out: Tensor | tuple[Tensor, ...]) -> None:
        captured.append(out if isinstance(out, tuple) else (out,))

    handle = model["trunk"].register_forward_hook(hook)
    try:
        h = model["trunk"](x)
    finally:
        handle.remove()
    losses = _losses(model, h, x)
    feats = captured[0]
    grads = []
    for t in TASKS:
        gs = torch.autograd.grad(losses[t], feats, retain_graph=True)
        grads.append(torch.cat([g.reshape(-1) for g in gs]))
    n = len(TASKS)
    ref = np.zeros((n, n))
    for s in range(n):
        for t in range(n):
            ref[s, t] = float(sum(gs * gt for gs, gt in zip(grads[s], grads[t], strict=True)))
    return ref


def _run(
    model: nn.Module, strategy: str, steps: int = 4, **kw: object
) -> tuple[xr.Dataset, list[np.ndarray]]:
    """Train a few SGD steps under ``record``; the reference Gram at each step's parameters."""
    torch.manual_seed(1)
    xs = [torch.randn(6, 5, dtype=torch.float64) for _ in range(steps)]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    refs = []
    with gradcomp.record(model, TASKS, strategy=strategy, **kw) as rec:  # type: ignore[arg-type]
        for x in xs:
            refs.append(_reference(model, x))
            h = model["trunk"](x)
            opt.zero_grad()
            feats = list(h) if isinstance(h, tuple) else h
            rec.backward(_losses(model, h, x), features=feats)
            opt.step()
    return rec.to_dataset(), refs


@pytest.mark.parametrize("two", [False, True], ids=["one-features", "two-features"])
def test_rep_gram_equals_naive_reference(two: bool) -> None:
    ds, refs = _run(_model(two), "features")
    assert ds.rep_gram.dims == ("step", "task", "task_j")
    np.testing.assert_allclose(ds.rep_gram.values, np.stack(refs), rtol=RTOL, atol=ATOL)
    # not trivially zero or diagonal: tasks share rows
    assert np.all(np.abs(ds.rep_gram.values[:, 1, 2]) > 1e-8)
    assert ds.rep_gram.attrs["units"] == "1"
    assert "representation" in ds.rep_gram.attrs["long_name"]


@pytest.mark.parametrize("two", [False, True], ids=["one-features", "two-features"])
def test_parameter_statistics_unchanged(two: bool) -> None:
    """The features recording (with rep_gram) has the loop recording's parameter statistics."""
    feat, _ = _run(_model(two), "features")
    loop, _ = _run(_model(two), "loop")
    assert "rep_gram" not in loop
    for name in ["loss", "gram", "grad_norm", "cosine"]:
        np.testing.assert_allclose(feat[name].values, loop[name].values, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("strategy", ["auto", "batched"])
def test_other_strategies_and_reduce_record_no_rep_gram(strategy: str) -> None:
    ds, _ = _run(_model(False), strategy, steps=1)
    assert "rep_gram" not in ds
    ds, _ = _run(_model(False), "features", steps=1, reduce=lambda g: g)
    assert "rep_gram" not in ds


def test_rep_gram_survives_flushes(tmp_path: object) -> None:
    path = f"{tmp_path}/rec.nc"
    ds, refs = _run(_model(False), "features", steps=5, path=path, flush_every=2)
    np.testing.assert_allclose(ds.rep_gram.values, np.stack(refs), rtol=RTOL, atol=ATOL)
    with xr.open_dataset(path, engine="h5netcdf") as on_file:
        np.testing.assert_allclose(on_file.rep_gram.values, np.stack(refs), rtol=RTOL, atol=ATOL)
        assert on_file.rep_gram.attrs["units"] == "1"


def test_nonfinite_loss_gives_nan_rows() -> None:
    model = _model(False)
    x = torch.randn(6, 5, dtype=torch.float64)
    with gradcomp.record(model, TASKS, strategy="features") as rec:
        h = model["trunk"](x)
        losses = _losses(model, h, x)
        losses["b"] = losses["b"] * float("nan")
        with pytest.warns(NonfiniteLossWarning):
            rec.backward(losses, features=h)
    g = rec.to_dataset().rep_gram.values[0]
    assert np.isnan(g[1]).all() and np.isnan(g[:, 1]).all()
    assert np.isfinite(g[np.ix_([0, 2], [0, 2])]).all()
