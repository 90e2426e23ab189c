"""Diverged runs: their share per cell, the refusal above a threshold, and S without them.

A trainer flags a run ``diverged`` from the first step at which one of its parameters or task
losses is not finite, and writes NaN outcomes for it from then on (NCnet: ``gradcomp.ncnet.run``;
LoRA: ``gradcomp.lora.run``). A NaN-loss head reads accuracy 0.5 and outcome −1, so counting it
would turn diverged training into a confident S (e.g. S = 2.000 [2.000, 2.000] at lr = 1e30).

Experiments report ``diverged_share`` (the share of a cell's seed × setting runs that diverged)
beside S, and refuse (a ``ValueError`` naming the learning rate) when it exceeds ``max_diverged``
(default :data:`MAX_DIVERGED`) at the reported step: S over the surviving seeds is S of a
selected subsample (seeds whose training survived), which is a different statistic from S of the
experiment once more than a few runs are lost.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np
import xarray as xr

from gradcomp._dims import ALICE, BOB, SEED

__all__ = ["LABELS", "MAX_DIVERGED", "check_share", "diverged_share", "estimate_finite"]

#: default largest share of diverged runs at the reported step before an experiment refuses
MAX_DIVERGED = 0.05

LABELS: dict[str, tuple[str, str]] = {
    "diverged_share": ("share of runs (seed × setting pair) that diverged", "1"),
    "n_excluded": ("seeds left out of S (a run of theirs diverged)", "1"),
}


def diverged_share(diverged: xr.DataArray) -> xr.DataArray:
    """Mean of the per-run flag over ``seed, alice, bob``: the share of a cell's runs lost."""
    share = diverged.astype(float).mean([SEED, ALICE, BOB])
    share.attrs = {"long_name": LABELS["diverged_share"][0], "units": "1"}
    return share.rename("diverged_share")


def check_share(
    share: xr.DataArray, *, max_diverged: float, lr: float, what: str, cell: str
) -> None:
    """Raise a ``ValueError`` when a cell's share of diverged runs exceeds ``max_diverged``.

    Args:
        share: ``diverged_share`` at the reported step, one value per cell (e.g. per width).
        max_diverged: the largest share accepted, in [0, 1].
        lr: the learning rate, named in the message.
        what: the experiment, e.g. ``"ncnet"`` ("... of the ncnet runs at width 3 ...").
        cell: the cell dimension of ``share`` (``"width"``, ``"rank"``), named in the message.
    """
    if not 0 <= max_diverged <= 1:
        raise ValueError(f"max_diverged must be a share in [0, 1], got {max_diverged}")
    values = np.asarray(share.values, dtype=float).ravel()
    if values.size == 0 or not np.nanmax(values) > max_diverged:
        return
    worst = int(np.nanargmax(values))
    at = share[cell].values.ravel()[worst] if cell in share.coords else "?"
    raise ValueError(
        f"{values[worst]:.1%} of the {what} runs at {cell} {at} diverged (non-finite loss or "
        f"parameters) at learning rate {lr:g}, more than max_diverged = {max_diverged:g}; use a "
        f"smaller learning rate (e.g. {lr / 10:g}), or raise max_diverged to report S over the "
        "seeds whose runs all stayed finite"
    )


def estimate_finite(a: xr.DataArray, b: xr.DataArray, **kwargs: Any) -> xr.Dataset:
    """``chsh.estimate`` per cell over the seeds whose four runs all have outcomes (not NaN).

    Stop-gap until ``gradcomp.chsh.estimate`` drops NaN quadruples itself (then call it directly
    and delete this): cells are grouped by their set of surviving seeds and each group estimated
    in one call, so without NaN this is exactly one ``chsh.estimate`` call. A cell with fewer than
    two surviving seeds gets NaN statistics. Adds ``n_excluded`` (seeds left out); ``n_seeds`` is
    the number used.

    Args:
        a, b: outcomes with dims ``(seed, alice, bob, ...)`` (±1, NaN for a diverged run).
        **kwargs: passed to :func:`gradcomp.chsh.estimate`.
    """
    from gradcomp import chsh

    extra: list[Hashable] = [d for d in a.dims if d not in (SEED, ALICE, BOB)]
    a = a.transpose(SEED, ALICE, BOB, *extra)
    b = b.transpose(SEED, ALICE, BOB, *extra)
    ok = (a.notnull() & b.notnull()).all([ALICE, BOB])  # (seed, *extra)
    n = a.sizes[SEED]
    if bool(ok.all()):
        out = chsh.estimate(a, b, **kwargs)
        out["n_excluded"] = xr.zeros_like(out["n_seeds"])
        return _label(out)
    cells = "_cell"
    sa = a.stack({cells: extra}) if extra else a.expand_dims({cells: [0]}, axis=-1)
    sb = b.stack({cells: extra}) if extra else b.expand_dims({cells: [0]}, axis=-1)
    keep = ok.stack({cells: extra}).values if extra else ok.values[:, None]  # (seed, cell)
    patterns, group = np.unique(keep.T, axis=0, return_inverse=True)
    parts, order = [], []
    for g, pattern in enumerate(patterns):
        idx = np.flatnonzero(np.ravel(group) == g)
        seeds = np.flatnonzero(pattern)
        ga = sa.isel({cells: idx}).drop_vars([cells, *extra], errors="ignore")
        gb = sb.isel({cells: idx}).drop_vars([cells, *extra], errors="ignore")
        if seeds.size >= 2:
            est = chsh.estimate(ga.isel({SEED: seeds}), gb.isel({SEED: seeds}), **kwargs)
        else:  # S is undefined: the layout of an estimate, every statistic NaN
            dummy = xr.ones_like(ga.isel({SEED: [0, 0]}).fillna(1))
            est = chsh.estimate(dummy, dummy, **kwargs)
            est = est.map(lambda v: v * np.nan if v.dtype.kind == "f" else v)
            est["n_seeds"] = xr.full_like(est["n_seeds"], seeds.size)
        parts.append(est)
        order.append(idx)
    out = xr.concat(parts, dim=cells, data_vars="all", coords="minimal", compat="override")
    out = out.isel({cells: np.argsort(np.concatenate(order))})
    out["n_excluded"] = n - out["n_seeds"]
    if extra:
        out = out.assign_coords({cells: sa[cells]}).unstack(cells)
        out = out.transpose(*[d for d in (ALICE, BOB, *extra) if d in out.dims])
        for d in extra:  # unstack sorts the index: restore the input's order and coordinates
            out = out.reindex({d: a[d].values}) if d in a.coords else out
    else:
        out = out.isel({cells: 0}, drop=True)
    out["n_seeds"] = out["n_seeds"].astype(np.int64)
    out["n_excluded"] = out["n_excluded"].astype(np.int64)
    out.attrs = parts[0].attrs
    return _label(out)


def _label(ds: xr.Dataset) -> xr.Dataset:
    from gradcomp import _dims, chsh

    for name in ds.data_vars:
        ds[name].attrs = {}
    return _dims.annotate(ds, {**chsh.LABELS, **LABELS})
