"""Small multiples of the NCnet family screen (``analyses/ncnet_family_screen.py``).

One panel per task family: S against hidden width with its interval, 2 + Δ, the lines at 2 and
2√2, trivial/degenerate points marked; panels in the order of the screen's table (qualifying
families by rank, then the rest). The selected family is framed green, the default blue. Writes
``figures/ncnet_family_screen.png``, stamped with the sha256 of the run's summary.

    python figures/ncnet_family_screen.py
    python figures/ncnet_family_screen.py --data /tmp/screen.nc --out /tmp/screen.png --tiny
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import xarray as xr

from gradcomp import summary
from gradcomp.plot.chsh import capacity

FAMILY = "family"


def order(ds: xr.Dataset) -> list[str]:
    """Families by rank (qualifying first), then by name: the order of the screen's table."""
    names = [str(f) for f in ds[FAMILY].values]
    rank = dict(zip(names, ds["rank"].values.tolist(), strict=True))
    return sorted(names, key=lambda f: (rank[f] if rank[f] > 0 else 10**6, f))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("results/ncnet_family_screen.nc"))
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("ncnet_family_screen.png"))
    p.add_argument("--tiny", action="store_true", help="low resolution (for tests)")
    args = p.parse_args(argv)
    if not args.data.exists():
        raise SystemExit(f"{args.data} not found: run analyses/ncnet_family_screen.py first")
    ds = xr.load_dataset(args.data, engine="h5netcdf")
    try:
        source = summary.source_of(ds)
    except ValueError as err:
        raise SystemExit(f"figures/ncnet_family_screen.py: {err}") from None
    names = order(ds)
    cols = min(6, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(2.6 * cols, 2.3 * rows + 1.2),
        sharex=True,
        sharey=True,
        layout="constrained",
        squeeze=False,
    )
    selected, default = ds.attrs.get("selected", ""), ds.attrs.get("default_family", "")
    legend: dict[str, object] = {}
    for ax, name in zip(axes.flat, names, strict=False):
        row = ds.sel({FAMILY: name})
        capacity(row, ax, control_prefix=None)
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(lab, h)
        ax.get_legend().remove()
        ax.set_xlabel("")
        ax.set_ylabel("")
        rank = int(row["rank"])
        tag = f"#{rank}" if rank else "does not qualify"
        ax.set_title(f"{name}\n{tag}", fontsize=7)
        ax.tick_params(labelsize=7)
        color = "tab:green" if name == selected else "tab:blue" if name == default else None
        if color:
            for side in ax.spines.values():
                side.set_edgecolor(color)
                side.set_linewidth(2.5)
    for ax in axes.flat[len(names) :]:
        ax.set_axis_off()
    for ax in axes[-1]:
        ax.set_xlabel("hidden width n", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("CHSH S", fontsize=8)
    fig.legend(list(legend.values()), list(legend), loc="outside lower center", ncols=3, fontsize=8)
    fig.suptitle(
        f"NCnet family screen: {int(ds.attrs['n_seeds'])} screen seeds ({ds.attrs['seeds']}), "
        f"{int(ds.attrs['steps'])} steps; green frame: selected by the rule, blue: the default\n"
        f"rule: {ds.attrs['selection_rule']}",
        fontsize=9,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    summary.savefig(fig, args.out, source, dpi=50 if args.tiny else 100)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
