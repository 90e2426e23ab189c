"""The capacity experiment: NCnet across widths, its CHSH estimate and the unshared control."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import xarray as xr

from gradcomp import chsh, dims
from gradcomp._diverged import LABELS as DIVERGED_LABELS
from gradcomp._diverged import MAX_DIVERGED, check_share, diverged_share
from gradcomp.dims import ALICE, BOB, STEP, WIDTH
from gradcomp.ncnet._config import NCnetConfig
from gradcomp.ncnet._run import reject_removed, run

__all__ = [
    "CONTROL_PREFIX",
    "PER_WIDTH",
    "CapacityResult",
    "capacity",
    "capacity_run",
    "capacity_values",
    "table",
]

#: variables of the unshared control carry this prefix
CONTROL_PREFIX = "unshared_"

#: per-width variables of :func:`capacity_values` (those the estimate provides are kept)
PER_WIDTH = (
    "S",
    "S_lo",
    "S_hi",
    "s_odd",
    "delta",
    "delta_lo",
    "delta_hi",
    "cbd_margin",
    "cbd_margin_lo",
    "cbd_margin_hi",
    "cbd_p_value",
    "signaling_p_value",
    "p_value",
    "remote_flip_fraction",
    "S_degenerate",
    "S_trivial",
    "n_excluded",
    "diverged_share",
    "n_seeds",
)


@dataclass(frozen=True)
class CapacityResult:
    """What :func:`capacity_run` returns: the Dataset of :func:`capacity` and its :func:`table`."""

    dataset: xr.Dataset
    table: str

    def values(self) -> dict:
        """:func:`capacity_values` of the dataset (the numbers a summary quotes)."""
        return capacity_values(self.dataset)


def capacity_run(
    config: NCnetConfig, widths: Sequence[int], seeds: int | Sequence[int], **kwargs: Any
) -> CapacityResult:
    """The capacity experiment as ``gradcomp ncnet`` and ``analyses/ncnet_capacity.py`` run it.

    Args:
        config, widths, seeds: as in :func:`capacity`.
        **kwargs: the keywords of :func:`capacity` (``control``, ``n_boot``, ``confidence``,
            ``device``, ``chunk``, ``progress``, ``engine``, ``max_diverged``).

    Returns:
        The Dataset and its printed table.
    """
    ds = capacity(config, list(widths), seeds, **kwargs)
    return CapacityResult(dataset=ds, table=table(ds))


def capacity_values(ds: xr.Dataset) -> dict:
    """Per width at the last step, for the main run (``"shared"``) and the control (``"unshared"``):
    the :data:`PER_WIDTH` variables and the correlators ``C`` (``"11"``, ``"12"``, ...)."""
    last = ds.isel({STEP: -1}) if STEP in ds.dims else ds
    out: dict = {"widths": last[WIDTH].values, "step": int(last[STEP]) if STEP in last else None}
    for prefix, key in (("", "shared"), (CONTROL_PREFIX, "unshared")):
        if prefix + "S" not in last:
            continue
        out[key] = {v: last[prefix + v].values for v in PER_WIDTH if prefix + v in last}
        out[key]["C"] = {
            f"{i}{j}": last[prefix + "C"].sel({ALICE: i, BOB: j}).values
            for i in (1, 2)
            for j in (1, 2)
        }
    return out


def capacity(
    config: NCnetConfig,
    widths: Sequence[int],
    seeds: int | Sequence[int],
    *,
    control: bool = True,
    n_boot: int = 2000,
    confidence: float = 0.95,
    device: str | torch.device = "cpu",
    chunk: int | None = None,
    progress: bool = True,
    engine: str = "auto",
    max_diverged: float = MAX_DIVERGED,
    **removed: Any,
) -> xr.Dataset:
    """Run NCnet over widths and attach :func:`gradcomp.chsh.estimate` at every traced step.

    Diverged runs (``diverged``: a non-finite loss or parameter; their outcomes are NaN) are left
    out of S: a seed with a diverged run is dropped from that (width, step) cell, ``n_seeds``
    counts the seeds used and ``n_excluded`` those left out, and ``diverged_share`` is the share
    of the cell's runs that diverged.

    Args:
        config: the experiment (``config.unshared`` selects the main experiment's architecture).
        widths, seeds, device, chunk, progress, engine: as in :func:`gradcomp.ncnet.run`.
        control: also run the same experiment with unshared hidden layers and store its
            estimate at the last step, and its final outcomes, as ``unshared_*`` variables.
        n_boot, confidence: bootstrap settings of the estimate.
        max_diverged: the largest ``diverged_share`` accepted at the last step, in any width (of
            the main run or the control); above it a ``ValueError`` names the learning rate.

    Returns:
        The run Dataset merged with the estimate (``S``, ``S_lo``, ..., ``n_excluded``,
        ``diverged_share`` with dims ``width, step``).

    Raises:
        ValueError: more than ``max_diverged`` of a width's runs diverged (before the control
            runs).
    """
    reject_removed("ncnet.capacity", removed)

    def run_widths(cfg: NCnetConfig, label: str) -> xr.Dataset:
        shown = f"{label} widths {widths[0]}..{widths[-1]}" if progress else False
        return run(cfg, widths, seeds, device=device, chunk=chunk, progress=shown, engine=engine)

    ds = run_widths(config, "ncnet " + ("unshared" if config.unshared else "shared"))
    share = diverged_share(ds.diverged)
    check_share(
        share.isel({STEP: -1}), max_diverged=max_diverged, lr=config.lr, what="ncnet", cell=WIDTH
    )
    est = chsh.estimate(ds.a, ds.b, n_boot=n_boot, confidence=confidence)
    est["diverged_share"] = share
    out = xr.merge([ds, est], combine_attrs="override")
    # the estimate's own attrs; its provenance (versions, history, config) is the run's already
    out.attrs.update({f"chsh_{k}": v for k, v in est.attrs.items() if k not in out.attrs})
    out.attrs["max_diverged"] = float(max_diverged)
    if control and not config.unshared:
        ctrl_cfg = replace(config, unshared=True, trace_every=(config.steps,), units=False)
        ctrl = run_widths(ctrl_cfg, "control: unshared")
        ctrl = ctrl.isel({STEP: -1}, drop=True)
        cshare = diverged_share(ctrl.diverged)
        check_share(
            cshare, max_diverged=max_diverged, lr=config.lr, what="ncnet control", cell=WIDTH
        )
        cest = chsh.estimate(ctrl.a, ctrl.b, n_boot=n_boot, confidence=confidence)
        cest["diverged_share"] = cshare
        renamed = {v: CONTROL_PREFIX + str(v) for v in cest.data_vars}
        cvars = cest.rename(renamed)
        for var in ("a", "b", "diverged"):
            cvars[CONTROL_PREFIX + var] = ctrl[var]
        labels = {
            CONTROL_PREFIX + k: (f"{v[0]} (unshared control)", v[1])
            for k, v in {
                **chsh.LABELS,
                **DIVERGED_LABELS,
                "a": ("Alice's outcome", "1"),
                "b": ("Bob's outcome", "1"),
                "diverged": ("run diverged", "1"),
            }.items()
        }
        for name in cvars.data_vars:
            cvars[name].attrs = {}
        out = xr.merge([out, dims.annotate(cvars, labels)], combine_attrs="override")
    return out


def table(ds: xr.Dataset) -> str:
    """A plain-text table per width of the last traced step (and the control, when present).

    Each row: the seeds used (``n``), S with its interval and a flag (``D``: degenerate, the
    interval is an exact bound; ``T``: trivial, every |C| = 1 so S is fixed by construction), Δ
    with its interval, s_odd, the CbD margin s_odd − (2 + Δ) with its interval and the p-value of
    "contextual" (margin > 0), the p-value of the exact signaling test, the remote flip fraction,
    and ``diverged`` (share of the width's runs that diverged) and ``excl`` (seeds left out of S
    for it; see :func:`capacity`).
    """
    last = ds.isel({STEP: -1}) if STEP in ds.dims else ds
    conf = float(ds.attrs.get("chsh_confidence", 0.95))
    n_total = ds.sizes["seed"] if "seed" in ds.dims else int(last.n_seeds.max())
    lines = [
        f"NCnet CHSH at step {int(last[STEP]) if STEP in last.coords else '?'}, "
        f"{n_total} seeds per setting pair; {conf:.0%} intervals (see chsh.estimate)",
        _HEADER,
    ]
    for w in last[WIDTH].values:
        lines.append(_row(int(w), last.sel({WIDTH: w})))
    p = CONTROL_PREFIX
    if p + "S" in ds:
        lines.append("unshared control (each head its own n hidden units):")
        lines.append(_HEADER)
        for w in ds[WIDTH].values:
            lines.append(_row(int(w), ds.sel({WIDTH: w}), p))
    lines.append(
        "flags: D = degenerate (every seed alike; exact bounds), T = trivial (every |C| = 1)"
    )
    return "\n".join(lines)


_HEADER = (
    f"{'width':>5} {'n':>5} {'S':>6} {'[lo, hi]':>15} {'':2} {'delta':>6} {'[lo, hi]':>13} "
    f"{'s_odd':>6} {'CbD margin':>10} {'[lo, hi]':>15} {'p(ctx)':>7} {'p(sig)':>7} "
    f"{'flips':>6} {'diverged':>8} {'excl':>4}"
)


def _row(w: int, r: xr.Dataset, prefix: str = "") -> str:
    """One table row of :func:`table` (``prefix`` selects the control's variables)."""

    def v(name: str) -> float:
        key = prefix + name
        return float(r[key]) if key in r else np.nan

    flag = ("D" if v("S_degenerate") == 1 else "") + ("T" if v("S_trivial") == 1 else "")
    return (
        f"{w:>5} {int(v('n_seeds')):>5} {v('S'):>+6.3f} [{v('S_lo'):+6.3f},{v('S_hi'):+6.3f}] "
        f"{flag:2} {v('delta'):>6.3f} [{v('delta_lo'):5.3f},{v('delta_hi'):5.3f}] "
        f"{v('s_odd'):>6.3f} {v('cbd_margin'):>+10.3f} "
        f"[{v('cbd_margin_lo'):+6.3f},{v('cbd_margin_hi'):+6.3f}] {v('cbd_p_value'):>7.3g} "
        f"{v('signaling_p_value'):>7.3g} {v('remote_flip_fraction'):>6.3f} "
        f"{_diverged_cells(r, prefix)}"
    )


def _diverged_cells(r: xr.Dataset, prefix: str = "") -> str:
    """``diverged`` (share of runs) and ``excl`` (seeds left out of S) of one table row."""
    share = float(r[prefix + "diverged_share"]) if prefix + "diverged_share" in r else np.nan
    excl = int(r[prefix + "n_excluded"]) if prefix + "n_excluded" in r else 0
    return f"{share:>8.1%} {excl:>4}"
