"""Every recorder strategy equals the naive per-task ``autograd.grad`` loop (float64), and training
is unchanged by recording."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import gradcomp
from gradcomp.reference import gram_reference, per_task_gradients, unit_gram_reference

RTOL, ATOL = 1e-9, 1e-12
STRATEGIES = ["loop", "batched", "features", "rows", "auto"]

Step = Callable[[nn.Module], tuple[dict[str, Tensor], Any, Any]]


@dataclass
class Problem:
    """A model, its tasks, and a forward pass returning (losses, features, rows)."""

    model: nn.Module
    tasks: list[str]
    step: Step
    shared_prefix: str  # names of shared parameters start with this


def _mlp(n_tasks: int, disjoint: bool, seed: int = 0) -> Problem:
    torch.manual_seed(seed)
    tasks = [f"t{i}" for i in range(n_tasks)]
    model = nn.ModuleDict(
        {
            "trunk": nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 6), nn.Tanh()),
            "heads": nn.ModuleDict({t: nn.Linear(6, 2) for t in tasks}),
        }
    ).double()
    per = 3
    x = torch.randn(per * n_tasks, 5, dtype=torch.float64)
    y = torch.randn(per * n_tasks, 2, dtype=torch.float64)

    def step(m: nn.Module) -> tuple[dict[str, Tensor], Any, Any]:
        h = m["trunk"](x)
        rows = {t: slice(per * i, per * (i + 1)) for i, t in enumerate(tasks)}
        losses = {}
        for t in tasks:
            r = rows[t] if disjoint else slice(None)
            losses[t] = ((m["heads"][t](h[r]) - y[r]) ** 2).mean()
        return losses, h, (rows if disjoint else None)

    return Problem(model, tasks, step, "trunk.")


class _Encoder(nn.Module):
    def __init__(self, tasks: list[str], d: int = 8) -> None:
        super().__init__()
        self.emb = nn.Embedding(11, d, padding_idx=0)
        self.pos = nn.Embedding(4, d)  # [1, seq] positions broadcast over the batch: fallback
        layer = nn.TransformerEncoderLayer(d, 2, 16, dropout=0.0, batch_first=True)
        self.trunk = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.heads = nn.ModuleDict({t: nn.Linear(d, 1) for t in tasks})


def _encoder(disjoint: bool) -> Problem:
    torch.manual_seed(1)
    tasks = ["a", "b", "c"]
    model = _Encoder(tasks).double()
    ids = torch.randint(0, 11, (6, 4))
    y = torch.randn(6, dtype=torch.float64)

    def step(m: nn.Module) -> tuple[dict[str, Tensor], Any, Any]:
        h = m.norm(m.trunk(m.emb(ids) + m.pos(torch.arange(4)[None])))
        pooled = h.mean(1)
        rows = {t: [2 * i, 2 * i + 1] for i, t in enumerate(tasks)}
        losses = {}
        for t in tasks:
            r = rows[t] if disjoint else list(range(6))
            losses[t] = ((m.heads[t](pooled[r]).squeeze(-1) - y[r]) ** 2).mean()
        return losses, h, (rows if disjoint else None)

    return Problem(model, tasks, step, "")


def _partial_reach() -> Problem:
    """Task "b" reads the first trunk layer only: it does not touch the shared "deep" layer."""
    torch.manual_seed(2)
    tasks = ["a", "b", "c"]
    model = nn.ModuleDict(
        {
            "first": nn.Linear(4, 6),
            "deep": nn.Linear(6, 6),
            "heads": nn.ModuleDict({t: nn.Linear(6, 1) for t in tasks}),
        }
    ).double()
    x = torch.randn(9, 4, dtype=torch.float64)

    def step(m: nn.Module) -> tuple[dict[str, Tensor], Any, Any]:
        h1 = torch.tanh(m["first"](x))
        h2 = torch.tanh(m["deep"](h1))
        rows = {"a": slice(0, 3), "b": slice(3, 6), "c": slice(6, 9)}
        feats = {"a": h2, "b": h1, "c": h2}
        losses = {t: m["heads"][t](feats[t][rows[t]]).pow(2).mean() for t in tasks}
        return losses, h1, rows  # "deep" is shared but above the features: head-side path

    return Problem(model, tasks, step, "")


PROBLEMS: dict[str, Callable[[], Problem]] = {
    "mlp2": lambda: _mlp(2, disjoint=False),
    "mlp3": lambda: _mlp(3, disjoint=False),
    "mlp4": lambda: _mlp(4, disjoint=False),
    "mlp3-rows": lambda: _mlp(3, disjoint=True),
    "encoder": lambda: _encoder(disjoint=False),
    "encoder-rows": lambda: _encoder(disjoint=True),
    "partial-reach": _partial_reach,
}


def _applies(strategy: str, rows: Any) -> bool:
    return strategy != "rows" or rows is not None


def _run(problem: Problem, strategy: str, steps: int = 2, **kw: Any) -> tuple[Any, list]:
    """Record ``steps`` SGD steps; return the Dataset and the reference Grams of each step."""
    model = problem.model
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    refs = []
    with gradcomp.record(model, problem.tasks, strategy=strategy, **kw) as rec:
        for _ in range(steps):
            losses, feats, rows = problem.step(model)
            refs.append(_reference(model, losses, rec))
            opt.zero_grad()
            rec.backward(losses, features=feats, rows=rows)
            opt.step()
    return rec.to_dataset(), refs


def _reference(model: nn.Module, losses: dict[str, Tensor], rec: Any) -> Any:
    named = dict(model.named_parameters())
    if rec.layout is not None:
        names = list(rec.layout.names)
    else:  # shared = reached by >= 2 tasks, computed naively from per-task gradients
        names = _naive_shared(losses, named)
    grads = per_task_gradients(list(losses.values()), [named[n] for n in names])
    return names, grads


def _naive_shared(losses: dict[str, Tensor], named: dict[str, Tensor]) -> list[str]:
    hits = {n: 0 for n in named}
    for loss in losses.values():
        gs = torch.autograd.grad(loss, list(named.values()), retain_graph=True, allow_unused=True)
        for n, g in zip(named, gs, strict=True):
            hits[n] += g is not None
    return [n for n, c in hits.items() if c >= 2]


def _check(ds: Any, refs: list, problem: Problem, units: bool = False) -> None:
    members = json.loads(ds.attrs["layer_members"])
    for k, (names, grads) in enumerate(refs):
        assert json.loads(ds.attrs["shared_parameters"]) == names
        got = ds.gram.isel(step=k)
        np.testing.assert_allclose(got.sel(layer="all").values, gram_reference(grads), RTOL, ATOL)
        for layer, ps in members.items():
            want = gram_reference(grads, [names.index(p) for p in ps])
            np.testing.assert_allclose(got.sel(layer=layer).values, want, RTOL, ATOL)
            if units:
                mod = problem.model.get_submodule(layer)
                if isinstance(mod, nn.Linear):
                    idx = [names.index(p) for p in ps]
                    want_u = unit_gram_reference(grads, idx, mod.out_features)
                    got_u = ds.unit_gram.isel(step=k).sel(layer=layer).values[: mod.out_features]
                    np.testing.assert_allclose(got_u, want_u, RTOL, ATOL)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("name", list(PROBLEMS))
def test_strategy_equals_reference(name: str, strategy: str) -> None:
    problem = PROBLEMS[name]()
    _, _, rows = problem.step(problem.model)
    if not _applies(strategy, rows):
        pytest.skip("rows needs tasks on disjoint rows")
    ds, refs = _run(problem, strategy, units=True)
    _check(ds, refs, problem, units=True)
    assert ds.sizes["step"] == 2


def test_partial_reach_gives_zero_gram_and_nan_cosine() -> None:
    problem = _partial_reach()
    ds, _ = _run(problem, "loop", steps=1)
    deep = ds.sel(layer="deep").isel(step=0)
    assert float(deep.grad_norm.sel(task="b")) == 0.0
    assert np.isnan(float(deep.cosine.sel(task="b", task_j="a")))
    assert float(deep.grad_norm.sel(task="a")) > 0


def test_nested_features_are_refused() -> None:
    problem = _partial_reach()
    model = problem.model
    with gradcomp.record(model, problem.tasks, strategy="features") as rec:
        losses, h1, _ = problem.step(model)
        h2 = torch.tanh(model["deep"](h1))
        with pytest.raises(ValueError, match="computed from another"):
            rec.backward(losses, features=[h1, h2])


def test_features_above_and_below_are_refused_but_auto_uses_loop() -> None:
    """A skip connection around the features: refused by "features", exact under "auto"."""
    problem = _mlp(2, disjoint=False)
    model = problem.model
    for strategy in ["features", "auto"]:
        with gradcomp.record(model, problem.tasks, strategy=strategy) as rec:
            losses, h, _ = problem.step(model)
            first = model["trunk"][0]
            losses = {t: v + first.weight.sum() * 1e-3 for t, v in losses.items()}
            _, grads = _reference(model, losses, rec)
            if strategy == "features":
                with pytest.raises(ValueError, match="both above"):
                    rec.backward(losses, features=h)
                continue
            rec.backward(losses, features=h)
        ds = rec.to_dataset()
        np.testing.assert_allclose(
            ds.gram.isel(step=0).sel(layer="all").values, gram_reference(grads), RTOL, ATOL
        )
        assert json.loads(ds.attrs["config"])["strategies_used"] == ["loop"]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_training_unchanged(strategy: str) -> None:
    """Parameters after N recorded steps equal plain training of the weighted summed loss."""
    torch.use_deterministic_algorithms(True)
    try:
        for name in ["mlp3-rows", "encoder-rows"]:
            problem = PROBLEMS[name]()
            weights = {t: 0.5 + i for i, t in enumerate(problem.tasks)}
            plain = copy.deepcopy(problem.model)
            opt_p = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9)
            opt_r = torch.optim.SGD(problem.model.parameters(), lr=0.1, momentum=0.9)
            for _ in range(4):
                losses, _, _ = problem.step(plain)
                opt_p.zero_grad()
                sum(weights[t] * losses[t] for t in problem.tasks).backward()
                opt_p.step()
            with gradcomp.record(problem.model, weights, strategy=strategy, every=1) as rec:
                for _ in range(4):
                    losses, feats, rows = problem.step(problem.model)
                    opt_r.zero_grad()
                    rec.backward(losses, features=feats, rows=rows)
                    opt_r.step()
            for (n, p), q in zip(problem.model.named_parameters(), plain.parameters(), strict=True):
                torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14, msg=f"{name}: {n}")
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_loss_weights_scale_training_not_statistics(strategy: str) -> None:
    """Statistics are of the unweighted losses whatever the loss weights (rows divides by w_t)."""
    for name in ["mlp3-rows", "encoder-rows"]:
        problem = PROBLEMS[name]()
        weights = {t: 0.25 + 1.5 * i for i, t in enumerate(problem.tasks)}
        with gradcomp.record(problem.model, weights, strategy=strategy, units=True) as rec:
            refs = []
            for _ in range(2):
                losses, feats, rows = problem.step(problem.model)
                refs.append(_reference(problem.model, losses, rec))
                problem.model.zero_grad()
                rec.backward(losses, features=feats, rows=rows)
        _check(rec.to_dataset(), refs, problem, units=True)
