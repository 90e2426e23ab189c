"""Contested hidden units vs S across NCnet width; the task–unit graph at the critical width.

Trains NCnet ensembles with per-unit Grams (``NCnetConfig(units=True)``), counts contested
units over training (:func:`gradcomp.graph.competition`), estimates S
(:func:`gradcomp.chsh.estimate`) and relates the two with the correlator
(:func:`gradcomp.analyze.correlate`) three ways:

* ``across_width``: ensemble mean of contested units vs S, one point per width;
* ``per_seed``: per seed, contested units (mean over the four setting pairs and the traced
  steps) vs the seed's CHSH contribution ``s_k = Σ_{x,y} ± a_{kxy} b_{kxy}`` (minus at (2, 2);
  common random numbers make it well defined and its seed mean is S), over (width, seed);
* ``per_seed_within_width``: the same with width partialled out (``control=width``).

The critical width is the width with the largest S (the project's reading). The graph drawn there
is one slice: setting pair (2, 2), the seed with most contested units at the end of training, at
the traced step where that seed has most contested units. Its ``unit_gram`` is saved so that the
figure script rebuilds the graph from saved data only.

Usage::

    python analyses/ncnet_competition.py --tiny     # seconds (a test runs it)
    python analyses/ncnet_competition.py            # widths 1-6, 50 seeds, 2000 steps

Writes ``results/ncnet_competition.nc`` (``--out`` to change); draw it with
``figures/ncnet_competition.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from gradcomp import chsh, dims, ncnet, summary
from gradcomp.analyze import correlate
from gradcomp.dims import ALICE, BOB, SEED, STEP, WIDTH
from gradcomp.graph import capacity_coord, competition
from gradcomp.provenance import provenance

LAYER = "hidden"
NAME = "ncnet_competition"
SUMMARY = summary.ROOT / "analyses" / "summaries" / f"{NAME}.json"
#: the estimate's variables kept for the S panel (those present)
CHSH_VARS = (
    "C",
    "C_lo",
    "C_hi",
    "S",
    "S_lo",
    "S_hi",
    "delta",
    "cbd_margin",
    "cbd_margin_lo",
    "cbd_margin_hi",
    "S_degenerate",
    "S_trivial",
    "n_seeds",
)
LABELS = {
    "contested_mean": ("number of contested units, mean over settings and traced steps", "1"),
    "contested_end": ("number of contested units at the end of training, settings mean", "1"),
    "s_seed": ("per-seed CHSH contribution (seed mean = S)", "1"),
    "critical_unit_gram": ("per-unit Gram at the critical width (drawn slice)", "1"),
}


def per_seed_s(a: xr.DataArray, b: xr.DataArray) -> xr.DataArray:
    """``s_k = a11 b11 + a12 b12 + a21 b21 − a22 b22`` per seed (dims without alice, bob)."""
    sign = xr.DataArray([[1, 1], [1, -1]], dims=(ALICE, BOB), coords={ALICE: [1, 2], BOB: [1, 2]})
    return (a.astype(np.float64) * b.astype(np.float64) * sign).sum((ALICE, BOB))


def summarize(ds: xr.Dataset, n_boot: int = 999, min_share: float | None = None) -> xr.Dataset:
    """Competition summary, S, correlations and the critical-width slice of an NCnet Dataset."""
    comp = competition(ds, layer=LAYER, min_share=min_share)
    a_end, b_end = ds["a"].isel({STEP: -1}), ds["b"].isel({STEP: -1})
    est = chsh.estimate(a_end, b_end, n_boot=n_boot)
    contested_mean = comp["n_contested"].mean((STEP, ALICE, BOB))  # (width, seed)
    contested_end = comp["n_contested"].isel({STEP: -1}).mean((ALICE, BOB))
    s_seed = per_seed_s(a_end, b_end)
    width = ds[WIDTH].broadcast_like(contested_mean)
    width.name = WIDTH
    analyses = {
        "across_width": correlate(contested_mean.mean(SEED), est["S"], WIDTH, n_boot=n_boot),
        "per_seed": correlate(contested_mean, s_seed, (WIDTH, SEED), n_boot=n_boot),
        "per_seed_within_width": correlate(
            contested_mean, s_seed, (WIDTH, SEED), control=width, n_boot=n_boot
        ),
    }
    corr = xr.concat(
        [c.drop_attrs() for c in analyses.values()],
        dim=xr.DataArray(list(analyses), dims="analysis"),
    )
    corr = corr.rename({k: f"corr_{k}" for k in corr.data_vars})
    for k in corr.data_vars:
        base = analyses["per_seed"][k.removeprefix("corr_")].attrs
        corr[k].attrs.update(base)

    critical = int(est[WIDTH].values[int(np.nanargmax(est["S"].values))])
    end = comp["n_contested"].sel({WIDTH: critical, ALICE: 2, BOB: 2})
    seed = int(end[SEED].values[int(end.isel({STEP: -1}).argmax(SEED))])
    step = int(end[STEP].values[int(end.sel({SEED: seed}).argmax(STEP))])
    slice_ = ds["unit_gram"].sel({WIDTH: critical, SEED: seed, ALICE: 2, BOB: 2, STEP: step})
    slice_ = (
        slice_.sel(layer=LAYER)
        .drop_vars([c for c in slice_.coords if c not in slice_.dims])
        .dropna(dims.UNIT, how="all")
    )

    out = xr.Dataset(
        {
            "n_contested": comp["n_contested"],
            "contested_share": comp["contested_share"],
            "n_owned": comp["n_owned"],
            "n_components": comp["n_components"],
            "contested_mean": contested_mean,
            "contested_end": contested_end,
            "s_seed": s_seed,
            **{v: est[v] for v in CHSH_VARS if v in est},
            "critical_unit_gram": slice_.rename({dims.UNIT: "critical_unit"}).astype(np.float64),
            **corr.data_vars,
        }
    )
    out = out.assign_coords(shared_capacity=capacity_coord(ds))
    out.attrs.update(provenance({"analysis": "ncnet_competition"}))
    out.attrs.update(
        ncnet_config=str(ds.attrs.get("config", "")),
        critical_width=critical,
        critical_seed=seed,
        critical_alice=2,
        critical_bob=2,
        critical_step=step,
        critical_rule="width of max S; pair (2, 2); seed with most contested units at the end; "
        "step with most contested units",
        min_share="1/(2 n_units)" if min_share is None else float(min_share),
    )
    return dims.annotate(out, {**comp_labels(comp), **LABELS})


def values(out: xr.Dataset) -> dict:
    """The summary's numbers: S and contested units per width, the correlations, the slice."""
    corr = {
        str(a): {
            k: float(out[f"corr_{k}"].sel(analysis=a))
            for k in (
                "spearman",
                "spearman_lo",
                "spearman_hi",
                "pearson",
                "pearson_lo",
                "pearson_hi",
            )
            if f"corr_{k}" in out
        }
        for a in out["analysis"].values
    }
    share = out["contested_share"].mean([d for d in out["contested_share"].dims if d != WIDTH])
    return {
        "widths": out[WIDTH].values,
        "n_seeds": int(out.sizes[SEED]),
        "S": out["S"].values,
        "S_lo": out["S_lo"].values,
        "S_hi": out["S_hi"].values,
        "contested_mean": out["contested_mean"].mean(SEED).values,
        "contested_share": share.values,
        "correlation": corr,
        "critical": {
            k: int(out.attrs[f"critical_{k}"]) for k in ("width", "seed", "alice", "bob", "step")
        },
    }


def comp_labels(comp: xr.Dataset) -> dict[str, tuple[str, str]]:
    return {k: (v.attrs["long_name"], v.attrs["units"]) for k, v in comp.data_vars.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/ncnet_competition.nc")
    parser.add_argument("--tiny", action="store_true", help="4 widths, 6 seeds, 60 steps")
    parser.add_argument("--widths", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6])
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--n-boot", type=int, default=999)
    parser.add_argument("--min-share", type=float, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--summary", type=Path, default=None, help=f"default {SUMMARY}")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    load0, t0 = summary.load_average(), time.perf_counter()
    if args.tiny:
        args.widths, args.seeds, args.steps, args.n_boot = [1, 2, 3, 4], 6, 60, 99
    out_path = Path(args.out)
    path = args.summary or (out_path.with_suffix(".json") if args.tiny else SUMMARY)
    config = ncnet.NCnetConfig(steps=args.steps, units=True)
    ds = ncnet.run(config, args.widths, args.seeds, device=args.device, progress=not args.tiny)
    out = summarize(ds, n_boot=args.n_boot, min_share=args.min_share)
    run_id = summary.new_run_id()
    out.attrs.update(summary.dataset_attrs(path, run_id))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out.to_netcdf(out_path, engine="h5netcdf")
    wall = time.perf_counter() - t0
    summary.write(
        path,
        {**values(out), "steps": args.steps},
        run_id=run_id,
        argv=["analyses/ncnet_competition.py", *(sys.argv[1:] if argv is None else argv)],
        timings={"wall_s": wall},
        load_start=load0,
    )
    row = out.sel(analysis="per_seed")
    print(
        f"wrote {args.out} and {path} ({wall:.0f} s): critical width "
        f"{out.attrs['critical_width']}, per-seed Spearman(contested, s_k) = "
        f"{float(row['corr_spearman']):.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
