"""gradcomp.ensemble: vmap trainer == per-run loop == the reference; Grams; per-run streams."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradcomp.ensemble import Problem, chunks, generator, per_task_stats, train, train_loop
from gradcomp.reference.ensemble import train_runs


def _toy_problem(weights=None) -> Problem:
    """Two tasks on a shared 2-layer trunk (two shared layers), squared losses."""

    def task_losses(p, d):
        h = torch.tanh(d["x"] @ p["W1"].T + p["b1"])
        z = torch.sin(h @ p["W2"].T)
        out = z @ p["heads"].T  # (N, 2)
        return ((out - d["y"]) ** 2).mean(0)

    def metrics(p, d):
        return {"sq": task_losses(p, d) ** 2}

    return Problem(
        task_losses, metrics, layers={"one": ("W1", "b1"), "two": ("W2",)}, weights=weights
    )


def _toy_batch(runs: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    params = {
        "W1": torch.randn(runs, 4, 3, generator=g, dtype=dtype),
        "b1": torch.randn(runs, 4, generator=g, dtype=dtype),
        "W2": torch.randn(runs, 4, 4, generator=g, dtype=dtype) / 2,
        "heads": torch.randn(runs, 2, 4, generator=g, dtype=dtype),
    }
    data = {
        "x": torch.randn(runs, 6, 3, generator=g, dtype=dtype),
        "y": torch.randn(runs, 6, 2, generator=g, dtype=dtype),
    }
    return params, data


@pytest.mark.parametrize("weights", [None, (0.3, 1.7)])
def test_vmap_trainer_equals_the_loop_run_by_run(weights) -> None:
    prob = _toy_problem(weights)
    params, data = _toy_batch(5)
    kw = {"steps": 25, "lr": 0.1, "trace_steps": [0, 3, 25], "units": True}
    fv, tv = train(prob, params, data, **kw)
    fl, tl = train_loop(prob, params, data, **kw)
    fr, tr = train_runs(prob, params, data, **kw)  # the independent reference
    assert set(tv) == set(tl) == set(tr) == {"loss", "sq", "gram", "unit_gram", "diverged"}
    assert not tv["diverged"].any()
    for f, t in ((fv, tv), (fl, tl)):
        for k in fr:
            torch.testing.assert_close(f[k], fr[k], rtol=1e-10, atol=1e-12)
        for k in tr:
            assert t[k].shape == tr[k].shape
            torch.testing.assert_close(t[k], tr[k], rtol=1e-10, atol=1e-12)
    assert tv["gram"].shape == (3, 5, 3, 2, 2)  # trace, run, layer (one, two, all), T, T
    assert tv["unit_gram"].shape == (3, 5, 3, 4, 2, 2)
    # the trained runs actually moved
    assert not torch.allclose(fv["W1"], params["W1"])


def test_divergence_is_flagged_per_run_from_its_first_nonfinite_step() -> None:
    prob = _toy_problem()
    params, data = _toy_batch(4)
    params["heads"][1] *= 1e200  # run 1: loss overflows at once
    params["W2"][2, 0, 0] = float("nan")  # run 2: a NaN parameter from the start
    data["y"][3] *= 1e100  # run 3: finite at step 0, overflows after some updates
    kw = {"steps": 6, "lr": 0.1, "trace_steps": [0, 1, 2, 6]}
    _, tv = train(prob, params, data, **kw)
    _, tl = train_loop(prob, params, data, **kw)
    _, tr = train_runs(prob, params, data, **kw)
    torch.testing.assert_close(tv["diverged"], tr["diverged"], rtol=0, atol=0)
    torch.testing.assert_close(tl["diverged"], tr["diverged"], rtol=0, atol=0)
    flags = tr["diverged"].numpy()  # (trace, run)
    assert flags.dtype == bool
    assert not flags[:, 0].any() and flags[:, 1].all() and flags[:, 2].all()
    assert not flags[0, 3] and flags[-1, 3]
    assert (np.diff(flags.astype(int), axis=0) >= 0).all()  # once diverged, always diverged
    # a flag equals "some loss or parameter was non-finite at a traced step so far"
    finite_loss = torch.isfinite(tr["loss"]).all(-1).numpy()
    assert (flags >= ~finite_loss).all()


def test_one_run_does_not_depend_on_the_others() -> None:
    prob = _toy_problem()
    params, data = _toy_batch(4)
    kw = {"steps": 10, "lr": 0.1, "trace_steps": [10]}
    _, all_runs = train(prob, params, data, **kw)
    sub = {k: v[2:3] for k, v in params.items()}
    _, one = train(prob, sub, {k: v[2:3] for k, v in data.items()}, **kw)
    torch.testing.assert_close(all_runs["loss"][:, 2:3], one["loss"], rtol=1e-12, atol=1e-14)


def test_per_task_stats_against_explicit_sums() -> None:
    prob = _toy_problem()
    g = torch.Generator().manual_seed(1)
    grads = {
        "W1": torch.randn(2, 4, 3, generator=g, dtype=torch.float64),
        "b1": torch.randn(2, 4, generator=g, dtype=torch.float64),
        "W2": torch.randn(2, 4, 4, generator=g, dtype=torch.float64),
    }
    out = per_task_stats(prob, grads, units=True)
    one = torch.cat([grads["W1"].reshape(2, -1), grads["b1"]], 1)
    two = grads["W2"].reshape(2, -1)
    for layer, flat in enumerate([one, two, torch.cat([one, two], 1)]):
        for i in range(2):
            for j in range(2):
                assert out["gram"][layer, i, j] == pytest.approx(float(flat[i] @ flat[j]))
    u = 2
    row = torch.cat([grads["W1"][:, u], grads["b1"][:, u, None]], 1)
    assert out["unit_gram"][0, u, 0, 1] == pytest.approx(float(row[0] @ row[1]))
    assert torch.allclose(out["unit_gram"][2].sum(0), out["gram"][2])


def test_trace_steps_are_validated() -> None:
    params, data = _toy_batch(2)
    with pytest.raises(ValueError, match="trace steps"):
        train(_toy_problem(), params, data, steps=3, lr=0.1, trace_steps=[5])


def test_generator_depends_only_on_its_key() -> None:
    a = generator(7, 3).standard_normal(5)
    assert np.array_equal(a, generator(7, 3).standard_normal(5))
    assert not np.array_equal(a, generator(7, 4).standard_normal(5))
    assert not np.array_equal(a, generator(8, 3).standard_normal(5))
    with pytest.raises(ValueError, match="non-negative"):
        generator(-1)


def test_chunks() -> None:
    assert list(chunks(range(5), 2)) == [[0, 1], [2, 3], [4]]
    assert list(chunks([3, 1], None)) == [[3, 1]]
    with pytest.raises(ValueError, match="chunk"):
        list(chunks([1], 0))
