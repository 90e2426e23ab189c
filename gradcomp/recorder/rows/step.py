"""One recorded step of the ``"rows"`` strategy (see :mod:`gradcomp.recorder.rows`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from gradcomp.recorder._inputs import weighted_total
from gradcomp.recorder.batched import stacks_from_jacobian
from gradcomp.recorder.rows.check import verify_rows
from gradcomp.recorder.rows.hooks import RowsHooks
from gradcomp.recorder.rows.registry import supported
from gradcomp.recorder.rows.spec import as_row_index, check_disjoint, check_rows, even_rows
from gradcomp.recorder.shared import Layout
from gradcomp.recorder.stats import ParamStats, from_stacks

__all__ = ["hookable", "rows_stats"]


def hookable(model: nn.Module, layout: Layout) -> dict[int, str]:
    """Shared parameters whose per-task gradients the row hooks compute, with their owner."""
    return {
        i: owner
        for i, (name, owner) in enumerate(zip(layout.names, layout.owners, strict=True))
        if name.rpartition(".")[2] in supported(model.get_submodule(owner))
    }


def rows_stats(
    hooks: RowsHooks,
    layout: Layout,
    hookable: Mapping[int, str],
    tasks: Sequence[str],
    ordered: Sequence[Tensor],
    weights: Sequence[float],
    rows: Mapping[str, Any],
    units: bool,
    verify: bool = False,
    train: bool = True,
) -> ParamStats:
    """One recorded ``"rows"`` step: per-parameter Gram entries, and ``.grad`` from one backward.

    Parameters of modules the hooks did not capture take one vmapped VJP first (graph retained),
    then ``Σ_t w_t L_t`` is back-propagated once while the hooks reduce the captured modules.

    Args:
        hooks: the installed hooks (armed for this step's forward).
        layout: the shared parameters.
        hookable: :func:`hookable` of the model.
        tasks: task names (order of ``ordered``).
        ordered: the task losses.
        weights: the loss weights.
        rows: task -> its batch rows.
        units: also per-unit Grams.
        verify: check ``rows=`` against the graph first (:func:`.check.verify_rows`; the
            hooks must have kept this step's outputs).
        train: back-propagate into ``.grad``; else leave every ``.grad`` alone and keep the
            graph (``Recorder.observe``).

    Returns:
        The per-parameter statistics.

    Raises:
        ValueError: ``rows=`` names other tasks, overlaps, or (with ``verify``) misdescribes the
            rows a loss reads.
    """
    check_rows(rows, tasks)
    device = ordered[0].device
    captured = hooks.captured()
    idx = [as_row_index(rows[t], hooks.batch_size) for t in tasks]
    if not even_rows(idx):  # equal consecutive slices in task order are disjoint
        check_disjoint(idx, hooks.batch_size)
    if verify:
        kept = {n: outs for n, outs in hooks.outputs.items() if n in captured}  # forward order
        hooks.outputs.clear()
        verify_rows(kept, hooks.batch_size, idx, tasks, ordered)
    covered = {i for i, owner in hookable.items() if owner in captured}
    rest = [i for i in range(len(layout.names)) if i not in covered]
    extra: dict[int, tuple[Tensor, Tensor | None]] = {}
    if rest:  # fallback: one vmapped VJP for parameters the hooks don't cover
        params = [layout.params[i] for i in rest]
        stacked = torch.stack(list(ordered))
        eye = torch.eye(len(ordered), dtype=stacked.dtype, device=device)
        jac = torch.autograd.grad(
            stacked, params, grad_outputs=eye, is_grads_batched=True,
            retain_graph=True, allow_unused=True,
        )  # fmt: skip
        sub = _sub(layout, rest)
        ps = from_stacks(stacks_from_jacobian(sub, params, list(jac), len(ordered)), sub, units)
        for k, i in enumerate(rest):
            extra[i] = (ps.gram[k], ps.units[k] if ps.units else None)
    total = weighted_total(ordered, weights)
    done = hooks.run(total, idx, weights, layout, units, captured, train)
    done.update(extra)
    t = len(ordered)
    grams: list[Tensor] = []
    unit_list: list[Tensor | None] = []
    for i, p in enumerate(layout.params):
        if i in done:
            grams.append(done[i][0])
            unit_list.append(done[i][1])
        else:  # covered but no gradient reached it this step
            dt = torch.float64 if p.dtype == torch.float64 else torch.float32
            grams.append(torch.zeros(t, t, dtype=dt, device=device))
            unit_list.append(
                torch.zeros(layout.units[i], t, t, dtype=dt, device=device)
                if units and layout.units[i]
                else None
            )
    dtype = torch.promote_types(grams[0].dtype, torch.float32)
    for g in grams:
        dtype = torch.promote_types(dtype, g.dtype)
    return ParamStats(torch.stack([g.to(dtype) for g in grams]), unit_list if units else None)


def _sub(layout: Layout, idx: Sequence[int]) -> Layout:
    return Layout(
        names=tuple(layout.names[i] for i in idx),
        params=tuple(layout.params[i] for i in idx),
        layers=tuple(layout.names[i] for i in idx),
        members=tuple((k,) for k in range(len(idx))),
        units=tuple(layout.units[i] for i in idx),
        layer_units=tuple(layout.units[i] for i in idx),
        owners=tuple(layout.owners[i] for i in idx),
    )
