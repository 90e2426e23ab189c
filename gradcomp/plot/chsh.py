"""CHSH plots: S against capacity with its interval and reference lines, and the correlators.

Each function takes ``(data, ax)`` and returns ``ax``; ``data`` is a Dataset holding the output
of :func:`gradcomp.chsh.estimate` (for example a saved ``gradcomp ncnet`` result).
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from scipy import stats

from gradcomp.dims import ALICE, BOB, CBD_MARGIN, DELTA, HI, LO, RANK, STEP, WIDTH, C, S

__all__ = ["capacity", "correlator_bounds", "correlators", "figure", "margin"]

TSIRELSON = 2 * np.sqrt(2)


def _capacity_dim(ds: xr.Dataset) -> str:
    for dim in (WIDTH, RANK):
        if dim in ds[S].dims:
            return dim
    raise ValueError(f"S needs a capacity dimension {WIDTH!r} or {RANK!r}; it has {ds[S].dims}")


def _last_step(ds: xr.Dataset) -> xr.Dataset:
    return ds.isel({STEP: -1}) if STEP in ds.dims else ds


def _flags(ds: xr.Dataset, prefix: str = "") -> tuple[np.ndarray, np.ndarray]:
    """``(degenerate, trivial)`` per capacity value.

    From the estimate's ``S_degenerate`` / ``S_trivial`` when present; otherwise derived from
    the data: trivial when every correlator is ±1 (S is fixed by construction: every seed
    solves, or fails, alike), degenerate when the interval of S has zero width.
    """
    s = ds[prefix + S]
    if prefix + S + "_trivial" in ds:
        trivial = ds[prefix + S + "_trivial"].values.astype(bool)
    elif prefix + C in ds:
        c = ds[prefix + C]
        trivial = (np.abs(c) == 1).all([d for d in c.dims if d in (ALICE, BOB)]).values
    else:
        trivial = np.zeros(s.shape, dtype=bool)
    if prefix + S + "_degenerate" in ds:
        degenerate = ds[prefix + S + "_degenerate"].values.astype(bool)
    else:
        degenerate = (ds[prefix + S + HI] - ds[prefix + S + LO]).values == 0
    return degenerate & ~trivial, trivial


def _mark_flags(ax: Axes, x: np.ndarray, y: np.ndarray, ds: xr.Dataset, prefix: str = "") -> None:
    degenerate, trivial = _flags(ds, prefix)
    marks = (
        (trivial, "o", "w", "0.3", 9, "trivial: every |C| = 1 (S fixed by construction)"),
        (degenerate, "D", "none", "C3", 10, "degenerate: zero-variance cell"),
    )
    for where, marker, face, edge, size, label in marks:
        if where.any():
            ax.plot(
                x[where],
                y[where],
                marker,
                mfc=face,
                mec=edge,
                ms=size,
                mew=1.5,
                zorder=3,
                label=label,
            )


def _bars(y: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return np.abs(np.stack([y - lo, hi - y]))


def _interval_name(data: xr.Dataset) -> str:
    """``"95% interval"`` from the estimate's confidence attr, else ``"interval"``."""
    conf = data.attrs.get("chsh_confidence", data.attrs.get("confidence"))
    return f"{float(conf):.0%} interval" if conf is not None else "interval"


def _with_interval(
    ax: Axes, x: np.ndarray, ds: xr.Dataset, name: str, label: str, alpha: float, **style
) -> np.ndarray:
    """``ds[name]`` against ``x`` as a band between ``name + LO`` and ``name + HI`` and capped
    error bars (at thousands of seeds the band is often narrower than the marker); returns
    the values."""
    y, lo, hi = (ds[name + k].values for k in ("", LO, HI))
    ax.fill_between(x, lo, hi, color=style["color"], alpha=alpha, lw=0)
    ax.errorbar(
        x, y, yerr=_bars(y, lo, hi), fmt="o-", capsize=5, capthick=1.5, label=label, **style
    )
    return y


def capacity(data: xr.Dataset, ax: Axes, *, control_prefix: str | None = "unshared_") -> Axes:
    """S against capacity with its interval, 2 + Δ, and lines at 2 and 2√2.

    The interval is drawn as a band and as capped error bars (at thousands of seeds it is often
    narrower than the marker: the caps show where). Trivial points (every |C| = 1) and
    degenerate ones (zero-variance cells) are marked.

    Args:
        data: Dataset with ``S``, ``S_lo``, ``S_hi``, ``delta`` over ``width`` (or ``rank``);
            the last ``step`` is shown when there is a step dimension.
        ax: the axes to draw on.
        control_prefix: also draw the control's ``<prefix>S`` with its interval, when present
            (``None`` to skip).

    Returns:
        ``ax``.
    """
    missing = [v for v in (S, S + LO, S + HI, DELTA) if v not in data]
    if missing:
        raise ValueError(f"data lacks {missing}: pass the output of gradcomp.chsh.estimate")
    ds = _last_step(data)
    dim = _capacity_dim(ds)
    x = ds[dim].values
    label = f"S with {_interval_name(data)} (shared hidden layer)"
    s = _with_interval(ax, x, ds, S, label, 0.35, color="C0", ms=5, elinewidth=1.5)
    ax.plot(x, 2 + ds[DELTA].values, "--", color="C3", label="2 + Δ (signaling Δ)")
    if control_prefix and control_prefix + S in ds:
        c = ds[control_prefix + S].values
        clo, chi = ds[control_prefix + S + LO].values, ds[control_prefix + S + HI].values
        ax.errorbar(
            x + 0.12,
            c,
            yerr=_bars(c, clo, chi),
            fmt="s:",
            color="C2",
            ms=4,
            capsize=3,
            label="S (unshared control, shifted right)",
        )
    _mark_flags(ax, x, s, ds)
    ax.axhline(2, color="k", lw=1, label="2 (classical bound)")
    ax.axhline(TSIRELSON, color="C1", lw=1, ls="-.", label="2√2 (Tsirelson)")
    ax.set_xlabel(ds[dim].attrs.get("long_name", dim))
    ax.set_ylabel("CHSH S = C11 + C12 + C21 − C22")
    ax.set_xticks(x)
    ax.legend(fontsize="x-small", loc="best")
    return ax


def margin(data: xr.Dataset, ax: Axes) -> Axes:
    """The Contextuality-by-Default margin against capacity, with its interval when available.

    ``cbd_margin`` > 0 calls the system contextual (Kujala, Dzhafarov, Larsson, PRL 115,
    150401, 2015). The interval is ``cbd_margin_lo`` / ``cbd_margin_hi`` when the estimate
    provides it; without it the points are drawn alone and the legend says so.
    """
    if CBD_MARGIN not in data:
        raise ValueError("data lacks 'cbd_margin': pass the output of gradcomp.chsh.estimate")
    ds = _last_step(data)
    dim = _capacity_dim(ds)
    x = ds[dim].values
    m = ds[CBD_MARGIN].values
    if CBD_MARGIN + LO in ds:
        label = f"CbD margin with {_interval_name(data)}"
        _with_interval(ax, x, ds, CBD_MARGIN, label, 0.3, color="C4")
    else:
        ax.plot(x, m, "o-", color="C4", label="CbD margin (no interval from this estimator)")
    _mark_flags(ax, x, m, ds)
    ax.axhline(0, color="k", lw=1, label="0: contextual above")
    ax.set_xlabel(ds[dim].attrs.get("long_name", dim))
    ax.set_ylabel(ds[CBD_MARGIN].attrs.get("long_name", "CbD margin"), fontsize="small")
    ax.set_xticks(x)
    ax.legend(fontsize="x-small", loc="lower right")
    return ax


def correlator_bounds(ds: xr.Dataset, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """``(C_lo, C_hi)``: the estimate's when present, else exact Clopper–Pearson bounds.

    Each seed's product ab is ±1, so C = 2p − 1 with p the share of agreeing seeds; the bounds
    are 2·CP(p) − 1, exact also when every seed agrees (Clopper and Pearson, Biometrika 1934).
    """
    if C + LO in ds and C + HI in ds:
        return ds[C + LO].values, ds[C + HI].values
    if "n_seeds" not in ds:
        raise ValueError("data lacks 'C_lo'/'C_hi' and 'n_seeds': cannot bound the correlators")
    c = ds[C].values
    n = ds["n_seeds"].broadcast_like(ds[C]).transpose(*ds[C].dims).values.astype(float)
    k = np.rint((c + 1) / 2 * n)
    alpha = 1 - confidence
    with np.errstate(invalid="ignore"):
        p_lo = np.where(k > 0, stats.beta.ppf(alpha / 2, k, n - k + 1), 0.0)
        p_hi = np.where(k < n, stats.beta.ppf(1 - alpha / 2, k + 1, n - k), 1.0)
    return 2 * p_lo - 1, 2 * p_hi - 1


def correlators(data: xr.Dataset, ax: Axes) -> Axes:
    """The four correlators C_ij = ⟨ab⟩ against capacity with their intervals.

    C22 enters S with a minus sign (S = C11 + C12 + C21 − C22); it is drawn as measured.
    """
    if C not in data:
        raise ValueError("data lacks 'C': pass the output of gradcomp.chsh.estimate")
    ds = _last_step(data)
    dim = _capacity_dim(ds)
    x = ds[dim].values
    conf = float(data.attrs.get("chsh_confidence", data.attrs.get("confidence", 0.95)))
    lo, hi = (
        xr.DataArray(v, dims=ds[C].dims, coords=ds[C].coords) for v in correlator_bounds(ds, conf)
    )
    for k, (i, j) in enumerate(((1, 1), (1, 2), (2, 1), (2, 2))):
        sel = {ALICE: i, BOB: j}
        c = ds[C].sel(sel).values
        ax.errorbar(
            x + 0.06 * (k - 1.5),
            c,
            yerr=_bars(c, lo.sel(sel).values, hi.sel(sel).values),
            fmt="o-",
            color=f"C{k}",
            ms=4,
            capsize=3,
            label=f"C{i}{j}" + (" (enters S with a minus sign)" if (i, j) == (2, 2) else ""),
        )
    ax.axhline(0, color="k", lw=0.5)
    ax.set_ylim(-1.08, 1.08)
    ax.set_xlabel(ds[dim].attrs.get("long_name", dim))
    ax.set_ylabel(f"correlator ⟨ab⟩ over seeds ({conf:.0%} interval)")
    ax.set_xticks(x)
    ax.legend(fontsize="x-small", loc="lower right")
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
    """The capacity figure: :func:`capacity`, :func:`margin` and :func:`correlators`."""
    fig = Figure(figsize=(15, 4.6), layout="constrained")
    left, mid, right = fig.subplots(1, 3)
    capacity(data, left)
    shared_capacity_axis(data, left)
    margin(data, mid)
    correlators(data, right)
    for ax, tag in zip((left, mid, right), "abc", strict=True):
        ax.set_title(f"({tag})", loc="left", fontsize="medium")
    if title is None:
        alice, bob = data.attrs.get("alice_tasks", ""), data.attrs.get("bob_tasks", "")
        n = int(data["n_seeds"].max()) if "n_seeds" in data else 0
        title = f"NCnet: Alice {{{alice}}}, Bob {{{bob}}}, {n} seeds per setting pair"
    fig.suptitle(title, fontsize="medium")
    return fig
