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

import numpy as np
import xarray as xr

from gradcomp.dims import ALICE, BOB, SEED

__all__ = ["LABELS", "MAX_DIVERGED", "check_share", "diverged_share"]

#: default largest share of diverged runs at the reported step before an experiment refuses
MAX_DIVERGED = 0.05

LABELS: dict[str, tuple[str, str]] = {
    "diverged_share": ("share of runs (seed × setting pair) that diverged", "1"),
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
