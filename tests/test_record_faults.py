"""Nothing silent: non-finite gradients, `rows=` that misdescribe the losses, steps out of order."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import gradcomp
from gradcomp.recorder import NonfiniteGradientWarning
from gradcomp.recorder.rows import step as rows_step_mod
from gradcomp.reference import gram_reference, per_task_gradients

TASKS = ["a", "b", "c"]
ROWS = {"a": slice(0, 3), "b": slice(3, 6), "c": slice(6, 9)}
X = torch.randn(9, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
STRATEGIES = ["loop", "batched", "features", "rows"]


def _model(seed: int = 0, norm: bool = False) -> nn.ModuleDict:
    torch.manual_seed(seed)
    mid: nn.Module = nn.BatchNorm1d(5) if norm else nn.Identity()
    return nn.ModuleDict(
        {
            "trunk": nn.Sequential(nn.Linear(3, 5), mid, nn.Tanh(), nn.Linear(5, 4), nn.Tanh()),
            "heads": nn.ModuleDict({t: nn.Linear(4, 1) for t in TASKS}),
        }
    ).double()


def _nan_grad_losses(m: nn.Module) -> tuple[dict[str, Tensor], Tensor]:
    """Finite losses; task c's gradient is infinite on the first trunk layer only.

    ``√(h₁ − h₁)`` is 0 (finite) with derivative ``1/(2·0) = ∞`` with respect to the first layer's
    output ``h₁`` (on c's rows): ``∂L_c/∂trunk.0`` is non-finite, ``∂L_c/∂trunk.3`` is not.
    """
    h1 = m["trunk"][0](X)
    h = m["trunk"][4](m["trunk"][3](m["trunk"][2](m["trunk"][1](h1))))
    losses = {t: m["heads"][t](h[r]).pow(2).mean() for t, r in ROWS.items()}
    c = h1[ROWS["c"], :1]
    losses["c"] = losses["c"] + (c - c.detach()).sqrt().sum()
    return losses, h1  # trunk.3 sits above these features: a head-side shared layer


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_finite_loss_with_nonfinite_gradient_warns_and_is_nan(strategy: str) -> None:
    m = _model()
    with gradcomp.record(m, TASKS, strategy=strategy) as rec:
        losses, h1 = _nan_grad_losses(m)
        assert all(bool(torch.isfinite(v)) for v in losses.values())
        names = [n for n, _ in m.named_parameters() if n.startswith("trunk")]
        params = dict(m.named_parameters())
        grads = per_task_gradients(list(losses.values()), [params[n] for n in names])
        assert not all(bool(torch.isfinite(g).all()) for g in grads[2][:2])  # trunk.0: c is ∞
        assert all(bool(torch.isfinite(g).all()) for t in range(3) for g in grads[t][2:])
        assert all(bool(torch.isfinite(g).all()) for t in range(2) for g in grads[t])
        # one vmapped reverse pass ("batched") sends a zero cotangent of a and b through c's
        # √ node: 0 · ∞ = NaN reaches a's and b's gradients below it too. The per-task passes
        # (loop), the per-head passes (features) and the row blocks (rows) keep them finite.
        bad = ["a", "b", "c"] if strategy == "batched" else ["c"]
        at = re.escape(f"{bad} at step 0") + r".*'trunk.0', 'all'"
        with pytest.warns(NonfiniteGradientWarning, match=at):
            rec.backward(losses, features=h1, rows=ROWS)
    ds = rec.to_dataset()
    assert ds.attrs["config"].count(f'"strategies_used": ["{strategy}"]') == 1
    g = ds.gram.isel(step=0)
    good = [t for t in TASKS if t not in bad]
    for layer in ("trunk.0", "all"):  # the bad tasks' rows and columns are NaN, the others intact
        gl = g.sel(layer=layer)
        assert np.isnan(gl.sel(task=bad)).all() and np.isnan(gl.sel(task_j=bad)).all()
        idx = [0, 1] if layer == "trunk.0" else [0, 1, 2, 3]
        np.testing.assert_allclose(
            gl.sel(task=good, task_j=good).values,
            gram_reference([grads[TASKS.index(t)] for t in good], idx),
            rtol=1e-10,
            atol=1e-12,
        )
    # the layer where every gradient is finite keeps every entry (c included)
    np.testing.assert_allclose(
        g.sel(layer="trunk.3").values, gram_reference(grads, [2, 3]), rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_nonfinite_gradient_raises_when_asked(strategy: str) -> None:
    m = _model()
    with gradcomp.record(m, TASKS, strategy=strategy, on_nonfinite="raise") as rec:
        losses, h1 = _nan_grad_losses(m)
        bad = ["a", "b", "c"] if strategy == "batched" else ["c"]
        with pytest.raises(ValueError, match=re.escape(f"non-finite gradient for task(s) {bad}")):
            rec.backward(losses, features=h1, rows=ROWS)


def test_finite_gradients_give_no_warning() -> None:
    m = _model()
    with gradcomp.record(m, TASKS, on_nonfinite="raise") as rec:  # raise: any warning would fail
        h = m["trunk"](X)
        rec.backward({t: m["heads"][t](h[r]).pow(2).mean() for t, r in ROWS.items()})
    assert np.isfinite(rec.to_dataset().gram).all()


# -- rows= is checked on the first "rows" step -------------------------------------------------


def _rows_losses(m: nn.Module, reads: dict[str, Any]) -> dict[str, Tensor]:
    h = m["trunk"](X)
    return {t: m["heads"][t](h[reads[t]]).pow(2).mean() for t in TASKS}


def test_issue_example_wrong_rows_would_give_a_wrong_gram(monkeypatch: pytest.MonkeyPatch) -> None:
    """The silent failure the check prevents: rows= that lie change the Gram."""
    reads = {"a": slice(0, 4), "b": slice(4, 6), "c": slice(6, 9)}  # a reads b's first row
    m = _model()
    losses = _rows_losses(m, reads)
    names = [n for n, _ in m.named_parameters() if n.startswith("trunk")]
    params = dict(m.named_parameters())
    want = gram_reference(per_task_gradients(list(losses.values()), [params[n] for n in names]))
    monkeypatch.setattr(rows_step_mod, "verify_rows", lambda *a: None)  # without the check
    with gradcomp.record(m, TASKS, strategy="rows") as rec:
        rec.backward(_rows_losses(m, reads), rows=ROWS)
    got = rec.to_dataset().gram.isel(step=0).sel(layer="all").values
    assert not np.allclose(got, want, rtol=1e-3)  # silently wrong without the check


@pytest.mark.parametrize("strategy", ["rows", "auto"])
def test_rows_that_misdescribe_the_losses_are_refused(strategy: str) -> None:
    reads = {"a": slice(0, 4), "b": slice(4, 6), "c": slice(6, 9)}  # a reads row 3 (b's)
    m = _model()
    with gradcomp.record(m, TASKS, strategy=strategy) as rec:
        if strategy == "auto":  # "auto" takes "rows" from the step after the first rows= call
            rec.backward(_rows_losses(m, reads), rows=ROWS)
        m.zero_grad(set_to_none=True)
        with pytest.raises(ValueError, match=r"task 'a'.*rows \[3\].*'trunk.0'.*gives to b"):
            rec.backward(_rows_losses(m, reads), rows=ROWS)
        assert all(p.grad is None for p in m.parameters())  # refused before any backward


def test_rows_read_by_no_task_and_swapped_rows_are_refused() -> None:
    m = _model()
    with gradcomp.record(m, TASKS, strategy="rows") as rec:
        declared = {"a": slice(0, 3), "b": slice(3, 6), "c": slice(6, 8)}  # row 8: nobody's
        with pytest.raises(ValueError, match=r"task 'c'.*rows \[8\].*gives to no task"):
            rec.backward(_rows_losses(m, ROWS), rows=declared)
        swapped = {"a": ROWS["b"], "b": ROWS["a"], "c": ROWS["c"]}
        with pytest.raises(ValueError, match=r"task 'a'.*rows \[0, 1, 2\].*gives to b"):
            rec.backward(_rows_losses(m, ROWS), rows=swapped)


def test_a_model_that_mixes_rows_is_refused() -> None:
    m = _model(norm=True)  # batch norm: every loss depends on every row
    with gradcomp.record(m, TASKS, strategy="rows") as rec:
        with pytest.raises(ValueError, match=r"task 'a'.*mixes rows"):
            rec.backward(_rows_losses(m, ROWS), rows=ROWS)


def test_rows_are_checked_once_and_correct_rows_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    verify = rows_step_mod.verify_rows
    monkeypatch.setattr(rows_step_mod, "verify_rows", lambda *a: calls.append(1) or verify(*a))
    m = _model()
    with gradcomp.record(m, TASKS, strategy="rows") as rec:
        for _ in range(3):
            rec.backward(_rows_losses(m, ROWS), rows=ROWS)
    assert calls == [1]
    assert rec.to_dataset().sizes["step"] == 3


# -- step= must increase ----------------------------------------------------------------------


def test_repeated_or_decreasing_steps_are_refused_at_the_call() -> None:
    m = _model()
    with gradcomp.record(m, TASKS) as rec:
        rec.backward(_rows_losses(m, ROWS), step=5)
        m.zero_grad(set_to_none=True)
        with pytest.raises(ValueError, match=r"step=5 does not follow the previous step 5"):
            rec.backward(_rows_losses(m, ROWS), step=5)
        with pytest.raises(ValueError, match=r"step=3 does not follow the previous step 5"):
            rec.backward(_rows_losses(m, ROWS), step=3)
        assert all(p.grad is None for p in m.parameters())  # refused before any backward
        with pytest.raises(TypeError, match="step= must be an int"):
            rec.backward(_rows_losses(m, ROWS), step=6.5)  # type: ignore[arg-type]
        rec.backward(_rows_losses(m, ROWS))  # the counter continues: 6
        rec.backward(_rows_losses(m, ROWS), step=np.int64(10))  # type: ignore[arg-type]
    assert rec.to_dataset().step.values.tolist() == [5, 6, 10]
