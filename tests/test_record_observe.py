"""``Recorder.observe``: the statistics ``backward`` records, with every ``.grad`` untouched."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from test_record import PROBLEMS, RTOL, STRATEGIES, _applies
from torch import nn

import gradcomp

ATOL = 1e-12


def _grads(model: nn.Module) -> dict[str, torch.Tensor | None]:
    return {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


def _seed_grads(model: nn.Module) -> None:
    """Half the parameters get a random ``.grad``, the others keep ``None``."""
    gen = torch.Generator().manual_seed(5)
    for k, p in enumerate(model.parameters()):
        p.grad = torch.randn(p.shape, dtype=p.dtype, generator=gen) if k % 2 else None


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("name", ["mlp3", "mlp3-rows", "encoder-rows", "partial-reach"])
def test_observe_equals_backward_and_leaves_grad(name: str, strategy: str) -> None:
    problem = PROBLEMS[name]()
    _, _, rows = problem.step(problem.model)
    if not _applies(strategy, rows):
        pytest.skip("rows needs tasks on disjoint rows")
    trained = problem.model
    watched = copy.deepcopy(trained)
    _seed_grads(watched)
    kw = {"strategy": strategy, "units": True}
    with (
        gradcomp.record(trained, problem.tasks, **kw) as rec_b,
        gradcomp.record(watched, problem.tasks, **kw) as rec_o,
    ):
        for _ in range(3):  # "auto" takes "rows" from the step after the first rows= call
            trained.zero_grad()
            losses, feats, rows = problem.step(trained)
            rec_b.backward(losses, features=feats, rows=rows)
            before = _grads(watched)
            losses, feats, rows = problem.step(watched)
            rec_o.observe(losses, features=feats, rows=rows)
            after = _grads(watched)
            for n, g in before.items():
                if g is None:
                    assert after[n] is None, n
                else:  # bit-identical
                    assert after[n] is not None and torch.equal(after[n], g), n
    got, want = rec_o.to_dataset(), rec_b.to_dataset()
    assert rec_o._used == rec_b._used  # the same strategies ran
    np.testing.assert_array_equal(got.loss.values, want.loss.values)
    np.testing.assert_allclose(got.gram.values, want.gram.values, RTOL, ATOL)
    np.testing.assert_allclose(got.unit_gram.values, want.unit_gram.values, RTOL, ATOL)


def test_observe_records_unscheduled_steps_and_keeps_the_graph() -> None:
    problem = PROBLEMS["mlp3-rows"]()
    model = problem.model
    with gradcomp.record(model, problem.tasks, strategy="rows", every=10) as rec:
        rec.backward(problem.step(model)[0], rows=problem.step(model)[2])  # step 0: recorded
        losses, _, rows = problem.step(model)
        rec.observe(losses, rows=rows)  # step 1: not scheduled, recorded all the same
        model.zero_grad(set_to_none=True)
        sum(losses.values()).backward()  # the graph is still there
        rec.backward(problem.step(model)[0], rows=rows)  # step 2: not scheduled, not recorded
    ds = rec.to_dataset()
    assert ds.step.values.tolist() == [0, 1]
    assert all(p.grad is not None for p in model.parameters())


def test_observe_outside_the_block_is_refused() -> None:
    problem = PROBLEMS["mlp3"]()
    rec = gradcomp.record(problem.model, problem.tasks)
    with pytest.raises(RuntimeError, match=r"observe\(\) called outside"):
        rec.observe(problem.step(problem.model)[0])
