"""The per-run engine: one run at a time, plain ``torch.autograd.grad`` (``method="loop"``).

Slow but simple; a production path (e.g. NCnet's ``method="loop"``). The tests check it, like
:func:`gradcomp.ensemble.train`, against the independent
:func:`gradcomp.reference.ensemble.train_runs`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from gradcomp.ensemble._problem import Problem, per_task_stats

__all__ = ["train_loop"]


def train_loop(
    problem: Problem,
    params: Mapping[str, torch.Tensor],
    data: Mapping[str, torch.Tensor],
    *,
    steps: int,
    lr: float,
    trace_steps: Sequence[int],
    units: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Same contract as :func:`gradcomp.ensemble.train`, computed run by run in a Python loop.

    ``traces["diverged"]`` is computed here on its own: run r is flagged from the first traced
    step at which a parameter or task loss of it is not finite.
    """
    when = set(int(s) for s in trace_steps)
    shared = list(dict.fromkeys(n for names in problem.layers.values() for n in names))
    runs = next(iter(params.values())).shape[0]
    finals: list[dict[str, torch.Tensor]] = []
    per_run: list[list[dict[str, torch.Tensor]]] = []
    for r in range(runs):
        p = {k: v[r].detach().clone().requires_grad_(True) for k, v in params.items()}
        d = {k: v[r] for k, v in data.items()}
        records = []
        diverged = False  # from the first traced step with a non-finite parameter or loss on
        for t in range(steps + 1):
            if t in when:
                losses = problem.task_losses(p, d)
                finite = bool(torch.isfinite(losses).all()) and all(
                    bool(torch.isfinite(v).all()) for v in p.values()
                )
                diverged = diverged or not finite
                rec = {
                    "loss": losses.detach(),
                    **{k: v.detach() for k, v in problem.metrics(p, d).items()},
                    "diverged": torch.tensor(diverged),
                }
                if shared:
                    per_task: dict[str, list[torch.Tensor]] = {n: [] for n in shared}
                    for i in range(losses.shape[0]):
                        gs = torch.autograd.grad(
                            losses[i], [p[n] for n in shared], retain_graph=True
                        )
                        for n, g in zip(shared, gs, strict=True):
                            per_task[n].append(g)
                    stacked = {n: torch.stack(v) for n, v in per_task.items()}
                    rec.update(per_task_stats(problem, stacked, units))
                records.append(rec)
            if t == steps:
                break
            names = list(p)
            gs = torch.autograd.grad(problem.objective(p, d), [p[n] for n in names])
            with torch.no_grad():
                for n, g in zip(names, gs, strict=True):
                    p[n] -= lr * g
        finals.append({k: v.detach() for k, v in p.items()})
        per_run.append(records)
    final = {k: torch.stack([f[k] for f in finals]) for k in finals[0]}
    traces = {}
    if per_run and per_run[0]:
        for k in per_run[0][0]:
            traces[k] = torch.stack([torch.stack([rec[k] for rec in recs]) for recs in per_run], 1)
    return final, traces
