"""Many runs trained at once: stacked parameters, ``torch.func.vmap`` over runs.

This is the generic path (any functional model, autograd gradients). It, :func:`train_loop` and
fast model-specific paths such as NCnet's hand-derived one are tested against the independent
references of :mod:`gradcomp.reference`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch.func import grad, jacrev, vmap

from gradcomp.ensemble._problem import Params, Problem, per_task_stats

__all__ = ["train"]


def _trace_fn(problem: Problem, units: bool):
    def trace(params: Params, data: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        shared = [n for names in problem.layers.values() for n in names]
        rest = {k: v for k, v in params.items() if k not in shared}

        def losses_of_shared(sp: Params) -> torch.Tensor:
            return problem.task_losses({**rest, **sp}, data)

        sp = {n: params[n] for n in dict.fromkeys(shared)}
        per_task = jacrev(losses_of_shared)(sp) if sp else {}
        out = {"loss": problem.task_losses(params, data), **problem.metrics(params, data)}
        if sp:
            out.update(per_task_stats(problem, per_task, units))
        return out

    return trace


def train(
    problem: Problem,
    params: Mapping[str, torch.Tensor],
    data: Mapping[str, torch.Tensor],
    *,
    steps: int,
    lr: float,
    trace_steps: Sequence[int],
    units: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Full-batch gradient descent on a batch of independent runs, vectorised with vmap.

    Every tensor of ``params`` and ``data`` has the run axis first (length R). Run r follows
    θ ← θ − lr ∇_θ Σ_t w_t L_t(θ; data_r), exactly as it would alone.

    Args:
        problem: the functional model.
        params: stacked initial parameters ``{name: (R, *shape)}``.
        data: stacked per-run data (targets, masks) ``{name: (R, ...)}``.
        steps: number of updates.
        lr: learning rate.
        trace_steps: steps (0 = before the first update, ``steps`` = the end) at which losses,
            metrics and Gram statistics are read.
        units: also trace ``unit_gram``.

    Returns:
        ``(final_params, traces)`` where ``traces[name]`` has shape ``(len(trace_steps), R, ...)``.
        ``traces["diverged"]`` (bool ``(len(trace_steps), R)``) flags run r from the first traced
        step at which one of its parameters or task losses is not finite. Parameters are checked
        at the traced steps only, which misses nothing: θ − lr·g is non-finite wherever θ is, so
        a non-finite parameter stays non-finite (and the last step is traced when it is listed).
    """
    params = {k: v.detach().clone() for k, v in params.items()}
    when = sorted(set(int(s) for s in trace_steps))
    if when and (when[0] < 0 or when[-1] > steps):
        raise ValueError(f"trace steps must lie in [0, {steps}], got {when[0]}..{when[-1]}")
    step_grad = vmap(grad(problem.objective))
    trace = vmap(_trace_fn(problem, units))
    records: list[dict[str, torch.Tensor]] = []
    todo = set(when)
    diverged = None
    for t in range(steps + 1):
        if t in todo:
            rec = {k: v.detach() for k, v in trace(params, data).items()}
            bad = ~torch.isfinite(rec["loss"].reshape(len(rec["loss"]), -1)).all(1)
            for v in params.values():
                bad |= ~torch.isfinite(v.reshape(len(v), -1)).all(1)
            diverged = bad if diverged is None else diverged | bad
            rec["diverged"] = diverged
            records.append(rec)
        if t == steps:
            break
        g = step_grad(params, data)
        params = {k: v - lr * g[k] for k, v in params.items()}
    traces = {k: torch.stack([r[k] for r in records]) for k in records[0]} if records else {}
    return params, traces
