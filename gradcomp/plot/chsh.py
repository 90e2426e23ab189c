"""CHSH plots: S against capacity with its interval and reference lines, and the correlators.

Each function takes ``(data, ax)`` and returns ``ax``; ``data`` is a Dataset holding the output
of :func:`gradcomp.chsh.estimate` (for example a saved ``gradcomp ncnet`` result).
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gradcomp._dims import WIDTH

__all__ = ["capacity", "correlators", "figure"]

TSIRELSON = 2 * np.sqrt(2)


def _capacity_dim(ds: xr.Dataset) -> str:
    for dim in ("width", "rank"):
        if dim in ds["S"].dims:
            return dim
    raise ValueError(f"S needs a capacity dimension 'width' or 'rank'; it has {ds['S'].dims}")


def _last_step(ds: xr.Dataset) -> xr.Dataset:
    return ds.isel(step=-1) if "step" in ds.dims else ds


def capacity(data: xr.Dataset, ax: Axes, *, control_prefix: str | None = "unshared_") -> Axes:
    """S against capacity with its bootstrap interval, 2 + Δ, and lines at 2 and 2√2.

    Args:
        data: Dataset with ``S``, ``S_lo``, ``S_hi``, ``delta`` over ``width`` (or ``rank``);
            the last ``step`` is shown when there is a step dimension.
        ax: the axes to draw on.
        control_prefix: also draw the control's ``<prefix>S`` with its interval, when present
            (``None`` to skip).

    Returns:
        ``ax``.
    """
    missing = [v for v in ("S", "S_lo", "S_hi", "delta") if v not in data]
    if missing:
        raise ValueError(f"data lacks {missing}: pass the output of gradcomp.chsh.estimate")
    ds = _last_step(data)
    dim = _capacity_dim(ds)
    x = ds[dim].values
    s = ds["S"].values
    ax.fill_between(x, ds["S_lo"].values, ds["S_hi"].values, color="C0", alpha=0.25, lw=0)
    conf = data.attrs.get("chsh_confidence", data.attrs.get("confidence"))
    band = f"{float(conf):.0%} band" if conf is not None else "interval"
    ax.plot(x, s, "o-", color="C0", label=f"S with {band} (shared hidden layer)")
    ax.plot(x, 2 + ds["delta"].values, "--", color="C3", label="2 + Δ (CbD bound)")
    if control_prefix and f"{control_prefix}S" in ds:
        c = ds[f"{control_prefix}S"].values
        lo, hi = ds[f"{control_prefix}S_lo"].values, ds[f"{control_prefix}S_hi"].values
        ax.errorbar(
            x,
            c,
            yerr=[c - lo, hi - c],
            fmt="s:",
            color="C2",
            ms=4,
            capsize=2,
            label="S (unshared control)",
        )
    ax.axhline(2, color="k", lw=1, label="2 (classical)")
    ax.axhline(TSIRELSON, color="C1", lw=1, ls="-.", label="2√2 (Tsirelson)")
    ax.set_xlabel(ds[dim].attrs.get("long_name", dim))
    ax.set_ylabel("CHSH S")
    ax.set_xticks(x)
    ax.legend(fontsize="small", loc="lower right")
    return ax


def correlators(data: xr.Dataset, ax: Axes) -> Axes:
    """The four correlators C_ij = ⟨ab⟩ against capacity (last step when there is a step dim)."""
    if "C" not in data:
        raise ValueError("data lacks 'C': pass the output of gradcomp.chsh.estimate")
    ds = _last_step(data)
    dim = _capacity_dim(ds)
    x = ds[dim].values
    for k, (i, j) in enumerate(((1, 1), (1, 2), (2, 1), (2, 2))):
        ax.plot(
            x,
            ds["C"].sel(alice=i, bob=j).values,
            "o-",
            color=f"C{k}",
            ms=4,
            label=f"C{i}{j}" + (" (−)" if (i, j) == (2, 2) else ""),
        )
    ax.axhline(0, color="k", lw=0.5)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel(ds[dim].attrs.get("long_name", dim))
    ax.set_ylabel("correlator ⟨ab⟩")
    ax.set_xticks(x)
    ax.legend(fontsize="small")
    return ax


def shared_capacity_axis(data: xr.Dataset, ax: Axes) -> Axes:
    """Label the top of ``ax`` with the shared-channel capacity of each width.

    The capacity is the min-cut between the two heads in the network's tensor-network graph, in
    bits (``gradcomp.graph.capacity_coord``; Levine, Yakira, Cohen, Shashua, arXiv 1704.01552):
    log2(n) for n shared hidden units; the unshared control shares nothing (0).
    """
    from gradcomp.graph import capacity_coord

    bits = capacity_coord(data, unit="bits")
    top = ax.secondary_xaxis("top")
    top.set_xticks(bits[WIDTH].values, [f"{b:.2g}" for b in bits.values])
    top.set_xlabel("shared-channel capacity (min-cut, bits)", fontsize="small")
    return ax


def figure(data: xr.Dataset, *, title: str | None = None) -> Figure:
    """The capacity figure: :func:`capacity` and :func:`correlators` side by side."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    capacity(data, left)
    shared_capacity_axis(data, left)
    correlators(data, right)
    if title is None:
        alice, bob = data.attrs.get("alice_tasks", ""), data.attrs.get("bob_tasks", "")
        n = int(data["n_seeds"].max()) if "n_seeds" in data else 0
        title = f"NCnet: Alice {{{alice}}}, Bob {{{bob}}}, {n} seeds per setting pair"
    fig.suptitle(title, fontsize="medium")
    return fig
