"""The capacity experiment: NCnet across widths, its CHSH estimate and the unshared control."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
import xarray as xr

from gradcomp import _dims, chsh
from gradcomp._dims import STEP, WIDTH
from gradcomp.ncnet._config import NCnetConfig
from gradcomp.ncnet._run import run

__all__ = ["CONTROL_PREFIX", "capacity", "table"]

#: variables of the unshared control carry this prefix
CONTROL_PREFIX = "unshared_"


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
    backend: str = "auto",
) -> xr.Dataset:
    """Run NCnet over widths and attach :func:`gradcomp.chsh.estimate` at every traced step.

    Args:
        config: the experiment (``config.unshared`` selects the main experiment's architecture).
        widths, seeds, device, chunk, progress, backend: as in :func:`gradcomp.ncnet.run`.
        control: also run the same experiment with unshared hidden layers and store its
            estimate at the last step, and its final outcomes, as ``unshared_*`` variables.
        n_boot, confidence: bootstrap settings of the estimate.

    Returns:
        The run Dataset merged with the estimate (``S``, ``S_lo``, ... with dims ``width, step``).
    """
    ds = run(config, widths, seeds, device=device, chunk=chunk, progress=progress, backend=backend)
    est = chsh.estimate(ds.a, ds.b, n_boot=n_boot, confidence=confidence)
    out = xr.merge([ds, est], combine_attrs="override")
    out.attrs.update({f"chsh_{k}": v for k, v in est.attrs.items()})
    if control and not config.unshared:
        ctrl_cfg = replace(config, unshared=True, trace_every=(config.steps,), units=False)
        ctrl = run(
            ctrl_cfg, widths, seeds, device=device, chunk=chunk, progress=progress, backend=backend
        )
        ca, cb = ctrl.a.isel({STEP: -1}, drop=True), ctrl.b.isel({STEP: -1}, drop=True)
        cest = chsh.estimate(ca, cb, n_boot=n_boot, confidence=confidence)
        renamed = {v: CONTROL_PREFIX + str(v) for v in cest.data_vars}
        cvars = cest.rename(renamed)
        cvars[CONTROL_PREFIX + "a"] = ca
        cvars[CONTROL_PREFIX + "b"] = cb
        labels = {
            CONTROL_PREFIX + k: (f"{v[0]} (unshared control)", v[1])
            for k, v in {
                **chsh.LABELS,
                "a": ("Alice's outcome", "1"),
                "b": ("Bob's outcome", "1"),
            }.items()
        }
        for name in cvars.data_vars:
            cvars[name].attrs = {}
        out = xr.merge([out, _dims.annotate(cvars, labels)], combine_attrs="override")
    return out


def table(ds: xr.Dataset) -> str:
    """A plain-text table per width of the last traced step (and the control, when present)."""
    last = ds.isel({STEP: -1}) if STEP in ds.dims else ds
    conf = float(ds.attrs.get("chsh_confidence", 0.95))
    lines = [
        f"NCnet CHSH at step {int(last[STEP]) if STEP in last.coords else '?'}, "
        f"{int(last.n_seeds.max())} seeds per setting pair; interval {conf:.0%} bootstrap",
        f"{'width':>5} {'S':>6} {'[lo, hi]':>15} {'delta':>6} {'2+delta':>7} {'CbD margin':>10} "
        f"{'p(S>2)':>7} {'flips':>6} {'P(a=+1) 11/12/21/22':>20} {'P(b=+1) 11/12/21/22':>20}",
    ]
    for w in last[WIDTH].values:
        r = last.sel({WIDTH: w})
        pa = ((r.a + 1) / 2).mean("seed").values.ravel() if "a" in r else np.full(4, np.nan)
        pb = ((r.b + 1) / 2).mean("seed").values.ravel() if "b" in r else np.full(4, np.nan)
        lines.append(
            f"{int(w):>5} {float(r.S):>+6.3f} [{float(r.S_lo):+6.3f},{float(r.S_hi):+6.3f}] "
            f"{float(r.delta):>6.3f} {2 + float(r.delta):>7.3f} {float(r.cbd_margin):>+10.3f} "
            f"{float(r.p_value):>7.3g} {float(r.remote_flip_fraction):>6.3f} "
            f"{'/'.join(f'{x:.2f}' for x in pa):>20} {'/'.join(f'{x:.2f}' for x in pb):>20}"
        )
    p = CONTROL_PREFIX
    if p + "S" in ds:
        lines.append("unshared control (each head its own n hidden units):")
        lines.append(f"{'width':>5} {'S':>6} {'[lo, hi]':>15} {'delta':>6} {'CbD margin':>10}")
        for w in ds[WIDTH].values:
            r = ds.sel({WIDTH: w})
            lines.append(
                f"{int(w):>5} {float(r[p + 'S']):>+6.3f} "
                f"[{float(r[p + 'S_lo']):+6.3f},{float(r[p + 'S_hi']):+6.3f}] "
                f"{float(r[p + 'delta']):>6.3f} {float(r[p + 'cbd_margin']):>+10.3f}"
            )
    return "\n".join(lines)
