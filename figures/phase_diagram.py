"""Draw the S phase diagram from ``results/phase_diagram.nc`` (``analyses/phase_diagram.py``).

Two heat maps over NCnet width × learning rate: S with its bootstrap interval printed in each cell
(framed where the interval lies above 2), and cbd_margin = S − (2 + Δ) (framed where > 0, i.e.
where S exceeds what the measured signaling Δ can explain). Writes ``figures/phase_diagram.png``.

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
from matplotlib.axes import Axes
from matplotlib.colors import TwoSlopeNorm
from matplotlib.patches import Rectangle


def phase_map(data: xr.Dataset, ax: Axes, var: str = "S", center: float = 2.0) -> Axes:
    """Heat map of ``data[var]`` over (width, lr), diverging around ``center``.

    Cells are annotated with the value (and ``[S_lo, S_hi]`` for S); a black frame marks
    ``S_lo > 2`` (for S) or ``cbd_margin > 0`` (for cbd_margin).
    """
    da = data[var].transpose("width", "lr")
    vals = da.values
    span = max(float(np.nanmax(np.abs(vals - center))), 1e-3)
    norm = TwoSlopeNorm(vcenter=center, vmin=center - span, vmax=center + span)
    im = ax.imshow(vals, origin="lower", cmap="RdBu_r", norm=norm, aspect="auto")
    ax.figure.colorbar(im, ax=ax, label=da.attrs.get("long_name", var))
    ax.set_xticks(range(da.sizes["lr"]), [f"{v:g}" for v in da.lr.values])
    ax.set_yticks(range(da.sizes["width"]), [str(v) for v in da.width.values])
    ax.set_xlabel("learning rate")
    ax.set_ylabel("hidden width n")
    for i in range(vals.shape[0]):
        for j in range(vals.shape[1]):
            text = f"{vals[i, j]:.2f}"
            if var == "S":
                lo = float(data.S_lo.transpose("width", "lr")[i, j])
                hi = float(data.S_hi.transpose("width", "lr")[i, j])
                text += f"\n[{lo:.2f}, {hi:.2f}]"
                framed = lo > 2
            else:
                framed = vals[i, j] > 0
            dark = abs(norm(vals[i, j]) - 0.5) > 0.35  # deep colour: white text
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="w" if dark else "k")
            if framed:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=2, ec="k"))
    return ax


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("results/phase_diagram.nc"))
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("phase_diagram.png"))
    p.add_argument("--tiny", action="store_true", help="low resolution (for tests)")
    args = p.parse_args(argv)
    if not args.data.exists():
        raise SystemExit(f"{args.data} not found: run analyses/phase_diagram.py first")
    ds = xr.open_dataset(args.data, engine="h5netcdf").load()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), layout="constrained")
    phase_map(ds, axes[0], "S", center=2.0)
    axes[0].set_title("CHSH S [95% bootstrap CI]; frame: CI above 2")
    phase_map(ds, axes[1], "cbd_margin", center=0.0)
    axes[1].set_title("cbd_margin = S − (2 + Δ); frame: > 0")
    n = int(ds.attrs.get("seeds_per_cell", 0))
    steps = int(ds.attrs.get("steps", 0))
    wall = float(ds.attrs.get("sweep_wall_s", float("nan")))
    chunks = int(ds.attrs.get("sweep_chunks", 0))
    fig.suptitle(
        f"NCnet phase diagram: {n} seeds per cell, {steps} full-batch GD steps "
        f"(Dask sweep: {chunks} chunks, {wall:.0f} s wall)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=50 if args.tiny else 110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
