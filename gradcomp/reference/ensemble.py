"""Obviously correct, slow: a seeded-run ensemble trained one run at a time, for the tests.

Checks :func:`gradcomp.ensemble.train` (vmap) and :func:`gradcomp.ensemble.train_loop`. The
problem is duck-typed (any object with ``task_losses``, ``metrics``, ``layers`` and ``weights`` as
documented by :class:`gradcomp.ensemble.Problem`); nothing else of the trainer is used: the
objective ``Σ_t w_t L_t``, the plain gradient-descent step ``θ ← θ − lr ∇θ``, the divergence flags
and the Gram statistics are written out here, the Grams by Python loops over task pairs and units
(:mod:`gradcomp.reference.grads`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from gradcomp.reference.grads import gram_reference, unit_gram_reference

__all__ = ["train_runs"]


def train_runs(
    problem: Any,
    params: Mapping[str, torch.Tensor],
    data: Mapping[str, torch.Tensor],
    *,
    steps: int,
    lr: float,
    trace_steps: Sequence[int],
    units: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Train run r (row r of every ``params`` and ``data`` tensor) alone, for each r in turn.

    At each traced step (before that step's update) a run records its task losses, its metrics,
    ``diverged`` (a parameter or task loss of the run was non-finite at this or an earlier traced
    step), ``gram[l, i, j] = Σ_{p ∈ layer l} ⟨∂L_i/∂p, ∂L_j/∂p⟩`` for each layer and ``"all"``
    (every shared parameter once) and, with ``units``, ``unit_gram[l, u, i, j]`` (row u only).

    Args:
        problem: ``task_losses(params, data) -> (T,)``, ``metrics(params, data) -> {name: (T,)}``,
            ``layers`` (layer -> shared parameter names), ``weights`` (``None``: all 1).
        params: name -> ``(runs, *shape)`` initial parameters.
        data: name -> ``(runs, ...)`` per-run data.
        steps: number of updates.
        lr: learning rate.
        trace_steps: steps (0..steps) at which to record.
        units: also record ``unit_gram`` (axis 0 of a shared parameter is its unit axis).

    Returns:
        ``(final, traces)``: final parameters ``(runs, *shape)``; traces ``(n_traced, runs, ...)``
        in the parameters' dtype (``diverged`` bool).
    """
    when = sorted({int(s) for s in trace_steps})
    layers = {name: list(members) for name, members in problem.layers.items()}
    shared: list[str] = []
    for members in layers.values():
        shared += [n for n in members if n not in shared]
    layers["all"] = shared
    n_runs = next(iter(params.values())).shape[0]
    finals, records = [], []
    for r in range(n_runs):
        p = {k: v[r].detach().clone().requires_grad_(True) for k, v in params.items()}
        d = {k: v[r] for k, v in data.items()}
        names = list(p)
        rows: list[dict[str, torch.Tensor]] = []
        bad = False
        for step in range(steps + 1):
            if step in when:
                rows.append(_record(problem, p, d, layers, shared, units, bad))
                bad = bool(rows[-1]["diverged"])
            if step == steps:
                break
            losses = problem.task_losses(p, d)
            w = [1.0] * losses.shape[0] if problem.weights is None else list(problem.weights)
            objective = sum(float(w[i]) * losses[i] for i in range(losses.shape[0]))
            grads = torch.autograd.grad(objective, [p[n] for n in names])
            with torch.no_grad():
                for n, g in zip(names, grads, strict=True):
                    p[n] -= lr * g
        finals.append({k: v.detach() for k, v in p.items()})
        records.append(rows)
    final = {k: torch.stack([f[k] for f in finals]) for k in finals[0]}
    traces = {
        k: torch.stack([torch.stack([row[k] for row in rows]) for rows in records], dim=1)
        for k in (records[0][0] if records and records[0] else {})
    }
    return final, traces


def _record(
    problem: Any,
    p: dict[str, torch.Tensor],
    d: Mapping[str, torch.Tensor],
    layers: dict[str, list[str]],
    shared: list[str],
    units: bool,
    bad: bool,
) -> dict[str, torch.Tensor]:
    """One run's statistics at one traced step (``bad``: diverged at an earlier traced step)."""
    losses = problem.task_losses(p, d)
    finite = all(bool(torch.isfinite(v).all()) for v in [losses, *p.values()])
    dtype = losses.dtype
    row = {"loss": losses.detach(), "diverged": torch.tensor(bad or not finite)}
    row.update({k: v.detach() for k, v in problem.metrics(p, d).items()})
    if not shared:
        return row
    grads = [
        list(torch.autograd.grad(losses[i], [p[n] for n in shared], retain_graph=True))
        for i in range(losses.shape[0])
    ]
    index = {n: i for i, n in enumerate(shared)}
    members = {name: [index[n] for n in names] for name, names in layers.items()}
    row["gram"] = torch.as_tensor(
        np.stack([gram_reference(grads, m) for m in members.values()]), dtype=dtype
    )
    if units:
        n_units = p[shared[0]].shape[0]
        rows = [[g.reshape(n_units, -1) for g in gs] for gs in grads]
        row["unit_gram"] = torch.as_tensor(
            np.stack([unit_gram_reference(rows, m, n_units) for m in members.values()]),
            dtype=dtype,
        )
    return row
