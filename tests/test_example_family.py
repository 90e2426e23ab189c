"""Worked example: how to add an experiment family (a template to copy).

A family is a model, a per-seed training loop and the settings of Alice's and Bob's heads. It
reduces the per-task gradients of its shared parameters with :func:`gradcomp.gram.gram`, labels
them with :func:`gradcomp.gram.gram_dataset` (the data model every analyzer reads) and hands
the ±1 outcomes to :func:`gradcomp.chsh.estimate`. Nothing else in gradcomp changes.

Here: two linear heads on a shared linear layer; head A learns task ``alice`` (1: sign of x0,
2: sign of x1), head B task ``bob`` (1: sign of x0 + x1, 2: sign of x0 - x1); a head's outcome
is +1 when its training accuracy reaches 0.9.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import xarray as xr
from torch import nn

from gradcomp import gram as core
from gradcomp.chsh import estimate
from gradcomp.dims import ALICE, BOB, SEED, STEP

SEEDS, STEPS, RECORD = range(6), 30, (0, 10, 29)
TASKS = ("A", "B")


def labels(x: torch.Tensor, alice: int, bob: int) -> tuple[torch.Tensor, torch.Tensor]:
    ya = x[:, 0] if alice == 1 else x[:, 1]
    yb = x[:, 0] + x[:, 1] if bob == 1 else x[:, 0] - x[:, 1]
    return (ya > 0).float(), (yb > 0).float()


class Family(nn.Module):
    """The model of one run: a shared trunk and one head per task."""

    def __init__(self, seed: int, alice: int, bob: int) -> None:
        super().__init__()
        torch.manual_seed(seed)  # common random numbers: a seed's four runs share init and data
        self.x = torch.randn(64, 2, dtype=torch.float64)
        self.trunk = nn.Linear(2, 8, dtype=torch.float64)  # the shared parameters
        self.heads = nn.ModuleDict({t: nn.Linear(8, 1, dtype=torch.float64) for t in TASKS})
        self.targets = dict(zip(TASKS, labels(self.x, alice, bob), strict=True))

    def forward(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per-task losses and accuracies."""
        h = torch.tanh(self.trunk(self.x))
        logits = [self.heads[t](h)[:, 0] for t in TASKS]
        y = [self.targets[t] for t in TASKS]
        bce = nn.functional.binary_cross_entropy_with_logits
        return [bce(z, t) for z, t in zip(logits, y, strict=True)], [
            ((z > 0).double() == t).double().mean() for z, t in zip(logits, y, strict=True)
        ]


def train(seed: int, alice: int, bob: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One run: ``gram [step, layer, T, T]`` of the trunk's per-task gradients and the outcomes
    ``a``, ``b`` ``[step]`` at the recorded steps."""
    model = Family(seed, alice, bob)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    shared = list(model.trunk.parameters())
    grams, a, b = [], [], []
    for step in range(STEPS):
        losses, acc = model()
        if step in RECORD:
            per_task = [torch.autograd.grad(loss, shared, retain_graph=True) for loss in losses]
            stacks = [torch.stack(g) for g in zip(*per_task, strict=True)]  # [T, *shape] each
            grams.append(core.with_total(core.gram(stacks)[None]))  # layers "trunk", "all"
            a.append(1.0 if acc[0] >= 0.9 else -1.0)
            b.append(1.0 if acc[1] >= 0.9 else -1.0)
        opt.zero_grad()
        sum(losses).backward()
        opt.step()
    return torch.stack(grams).detach().numpy(), np.array(a), np.array(b)


@functools.cache
def run() -> tuple[xr.Dataset, xr.Dataset]:
    """Every seed × setting pair, as the standard Dataset, and its CHSH estimate."""
    runs = {(s, x, y): train(s, x, y) for s in SEEDS for x in (1, 2) for y in (1, 2)}

    def stack(i: int) -> np.ndarray:  # -> [seed, alice, bob, step, ...]
        return np.array([[[runs[s, x, y][i] for y in (1, 2)] for x in (1, 2)] for s in SEEDS])

    ds = core.gram_dataset(
        stack(0),
        (SEED, ALICE, BOB, STEP),
        {SEED: list(SEEDS), ALICE: [1, 2], BOB: [1, 2], STEP: list(RECORD)},
        tasks=TASKS,
        layers=["trunk", "all"],
        data={"a": ((SEED, ALICE, BOB, STEP), stack(1)), "b": ((SEED, ALICE, BOB, STEP), stack(2))},
    )
    return ds, estimate(ds.a, ds.b)


def test_example_family_gives_the_standard_dataset_and_an_s_estimate() -> None:
    ds, est = run()
    assert ds.gram.dims == (SEED, ALICE, BOB, STEP, "layer", "task", "task_j")
    assert ds.cosine.attrs["long_name"] and ds.grad_norm.dims[-1] == "task"
    np.testing.assert_array_equal(ds.gram.sel(layer="all"), ds.gram.sel(layer="trunk"))
    assert set(np.unique(ds.a)) <= {-1.0, 1.0} and set(np.unique(ds.b)) <= {-1.0, 1.0}
    assert est.S.dims == (STEP,) and np.isfinite(est.S).all()
    assert (abs(est.S) <= 4).all() and (est.S_lo <= est.S).all() and (est.S <= est.S_hi).all()


def test_example_family_gram_is_the_loop_of_dot_products() -> None:
    """The check every new family needs: its Gram against a naive float64 loop."""
    ds, _ = run()
    seed, alice, bob, step = 3, 2, 1, 10
    model = Family(seed, alice, bob)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(step):  # replay training up to the recorded step
        opt.zero_grad()
        sum(model()[0]).backward()
        opt.step()
    vectors = []
    for loss in model()[0]:
        g = torch.autograd.grad(loss, list(model.trunk.parameters()), retain_graph=True)
        vectors.append(torch.cat([v.flatten() for v in g]).tolist())
    ref = [[sum(p * q for p, q in zip(u, v, strict=True)) for v in vectors] for u in vectors]
    got = ds.gram.sel({SEED: seed, ALICE: alice, BOB: bob, STEP: step, "layer": "trunk"})
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-15)
