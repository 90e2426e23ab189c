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
    captured -= hooks.unsplit(idx)
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
    done, bulk = hooks.run(total, idx, weights, layout, units, captured, train)
    done.update(extra)
    t = len(ordered)
    dtype = torch.float32  # promoted over every Gram and every float64 parameter
    for p in layout.params:
        dtype = torch.promote_types(dtype, p.dtype) if p.dtype == torch.float64 else dtype
    for g, _ in done.values():
        dtype = torch.promote_types(dtype, g.dtype)
    if bulk is not None:
        dtype = torch.promote_types(dtype, bulk[1].dtype)
    # parameters covered but reached by no gradient this step keep zeros
    gram = torch.zeros(len(layout.params), t, t, dtype=dtype, device=device)
    if bulk is not None:
        gram[bulk[0]] = bulk[1].to(device, dtype)
    if done:
        keys = list(done)
        gram[keys] = torch.stack([done[i][0].to(device, dtype) for i in keys])
    if not units:
        return ParamStats(gram, None)
    unit_list: list[Tensor | None] = []
    for i, p in enumerate(layout.params):
        if i in done:
            unit_list.append(done[i][1])
        else:
            dt = torch.float64 if p.dtype == torch.float64 else torch.float32
            n = layout.units[i]
            unit_list.append(torch.zeros(n, t, t, dtype=dt, device=device) if n else None)
    return ParamStats(gram, unit_list)


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
