"""Draw the S phase diagram from ``results/phase_diagram.nc`` (``analyses/phase_diagram.py``).

Two heat maps over NCnet width × learning rate on one colour scale (the excess over the bound):
S with its interval printed in each cell (framed where the interval lies above 2), and the CbD
margin (framed where it, or its interval when the estimate has one, lies above 0, i.e. where S
exceeds what the measured signaling Δ can explain). Writes ``figures/phase_diagram.png``, stamped
with the sha256 of the run's summary.

    python figures/phase_diagram.py
    python figures/phase_diagram.py --data /tmp/pd.nc --out /tmp/pd.png --tiny
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.colors import TwoSlopeNorm
from matplotlib.image import AxesImage
from matplotlib.patches import Rectangle

from gradcomp import summary


def _bounds(data: xr.Dataset, var: str) -> tuple[np.ndarray, np.ndarray] | None:
    if f"{var}_lo" in data and f"{var}_hi" in data:
        return (
            data[f"{var}_lo"].transpose("width", "lr").values,
            data[f"{var}_hi"].transpose("width", "lr").values,
        )
    return None


def phase_map(data: xr.Dataset, ax: Axes, var: str, center: float, norm: TwoSlopeNorm) -> AxesImage:
    """Heat map of ``data[var] − center`` over (width, lr) on a diverging ``norm`` around 0.

    Cells show the value and its interval when the data have ``<var>_lo`` / ``<var>_hi``; a
    black frame with a white halo, inset so that neighbours stay apart, marks cells whose
    interval lies above ``center`` (without an interval: whose value does). White lines
    separate the cells.
    """
    da = data[var].transpose("width", "lr")
    vals = da.values
    im = ax.imshow(vals - center, origin="lower", cmap="RdBu_r", norm=norm, aspect="auto")
    ax.set_xticks(range(da.sizes["lr"]), [f"{v:g}" for v in da.lr.values])
    ax.set_yticks(range(da.sizes["width"]), [str(v) for v in da.width.values])
    ax.set_xticks(np.arange(-0.5, da.sizes["lr"]), minor=True)
    ax.set_yticks(np.arange(-0.5, da.sizes["width"]), minor=True)
    ax.grid(which="minor", color="w", lw=3)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("hidden width n")
    bounds = _bounds(data, var)
    for i in range(vals.shape[0]):
        for j in range(vals.shape[1]):
            text = f"{vals[i, j]:+.2f}"
            if bounds is not None:
                lo, hi = bounds[0][i, j], bounds[1][i, j]
                text += f"\n[{lo:+.2f}, {hi:+.2f}]"
                framed = lo > center
            else:
                framed = vals[i, j] > center
            dark = abs(norm(vals[i, j] - center) - 0.5) > 0.35  # deep colour: white text
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="w" if dark else "k")
            if framed:
                frame = Rectangle((j - 0.46, i - 0.46), 0.92, 0.92, fill=False, lw=2, ec="k")
                # a white halo keeps the black frame visible on deep colours
                frame.set_path_effects([patheffects.withStroke(linewidth=4.5, foreground="w")])
                ax.add_patch(frame)
    for side in ax.spines.values():
        side.set_linewidth(1.5)
    return im


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("results/phase_diagram.nc"))
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("phase_diagram.png"))
    p.add_argument("--tiny", action="store_true", help="low resolution (for tests)")
    args = p.parse_args(argv)
    if not args.data.exists():
        raise SystemExit(f"{args.data} not found: run analyses/phase_diagram.py first")
    ds = xr.open_dataset(args.data, engine="h5netcdf").load()
    try:
        source = summary.source_of(ds)
    except ValueError as err:
        raise SystemExit(f"figures/phase_diagram.py: {err}") from None
    span = max(
        float(np.nanmax(np.abs(ds["S"].values - 2))),
        float(np.nanmax(np.abs(ds["cbd_margin"].values))),
        1e-3,
    )
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-span, vmax=span)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), layout="constrained")
    fig.get_layout_engine().set(wspace=0.08)
    im = phase_map(ds, axes[0], "S", 2.0, norm)
    axes[0].set_title("(a) CHSH S [95% CI]; frame: interval above 2", loc="left")
    phase_map(ds, axes[1], "cbd_margin", 0.0, norm)
    has_ci = "cbd_margin_lo" in ds
    axes[1].set_title(
        "(b) CbD margin"
        + (" [95% CI]; frame: interval above 0" if has_ci else " (no interval); frame: > 0"),
        loc="left",
    )
    fig.colorbar(
        im, ax=axes, shrink=0.9, label="excess over the bound: S − 2 in (a), the margin in (b)"
    )
    n = int(ds.attrs.get("seeds_per_cell", 0))
    steps = int(ds.attrs.get("steps", 0))
    wall = float(ds.attrs.get("sweep_wall_s", float("nan")))
    chunks = int(ds.attrs.get("sweep_chunks", 0))
    info = summary.read(source)
    cpu = info.get("machine", {})
    where = f"{cpu.get('logical_cores', '?')}-core {cpu.get('cpu', '?')}, 1-min load " + (
        f"{info.get('load_1min_start')}–{info.get('load_1min_end')}"
    )
    fig.suptitle(
        f"NCnet phase diagram: {n} seeds per cell, {steps} full-batch GD steps\n"
        f"(Dask sweep: {chunks} chunks, {wall:.0f} s wall on a {where})",
        fontsize="medium",
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    summary.savefig(fig, args.out, source, dpi=50 if args.tiny else 110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
