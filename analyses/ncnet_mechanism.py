"""The NCnet mechanism experiment: conflict, oscillation and sensing beside S, across width.

For each width (and the unshared control at the critical width) one NCnet ensemble is trained
with every step traced (``trace_every=1``, per-unit Grams, held-out patterns) and reduced at once
to small summaries, so memory stays bounded by one width:

* ``traces``: S(step) with its interval, Δ and the CbD margin (:func:`gradcomp.chsh.estimate`);
  conflict frequency of the shared layer (Alice's head "A" against Bob's head "B") and loss
  oscillation amplitude (:func:`gradcomp.analyze.conflict`, :func:`~gradcomp.analyze.oscillation`),
  as seed means with a normal interval (mean ± 1.96 standard errors over seeds); held-out accuracy.
* ``units``: per-unit competition over training at each width; units carry no identity across
  runs, so within each run they are ranked by their mean conflict frequency over training
  (rank 0 = most contested) before averaging over seeds.
* ``sensing_loss`` / ``sensing_oscillation``: decoding of the remote setting from each head's own
  loss / own oscillation amplitude (:func:`gradcomp.analyze.sensing`).
* ``lagged``: r(k) between the per-seed conflict share (mean over the four setting pairs) and the
  per-seed CHSH contribution s_k (seed mean = S), first differences, seeds resampled.
* ``correlation``: the per-seed CHSH contribution s_k against the seed's held-out accuracy at
  the last step (raw over all seeds and widths, with width partialled out, and within each
  width), S against held-out accuracy across widths (one point per width, for contrast), and
  the seed's mean conflict share against s_k with width partialled out; and over training
  (observations: width x step, width partialled out, serially dependent along step, so the
  effective size and a block bootstrap account for autocorrelation) conflict share against S
  and S against held-out accuracy.

``control_traces`` / ``control_sensing_*`` hold the same for ``NCnetConfig(unshared=True)`` at
the critical width: no shared layer, so the A–B Gram is exactly 0 and nothing may be sensed.

The critical width is the shared width with the largest final S (the project's reading); the
comfortable width is the largest width.

Usage::

    python analyses/ncnet_mechanism.py --tiny   # seconds (a test runs it)
    python analyses/ncnet_mechanism.py          # widths 2 3 4 6, 128 seeds, 600 steps

Defaults (the project's reading): NCnet's default tasks (Alice x1 / x1^x2, Bob x1 / x1^x3) on
k = 4 inputs with 2 of the 16 patterns held out, so that held-out accuracy measures
generalization (each held-out pattern has a twin differing only in the irrelevant input x4; with
k = 3 held-out accuracy sits at chance and S cannot be related to generalization); full-batch
gradient descent, lr 0.5, 600 steps, every step traced.

Writes ``results/ncnet_mechanism.nc`` (netCDF groups: an ``xarray.DataTree``; ``--out`` to
change); draw it with ``figures/ncnet_mechanism.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from gradcomp import _dims, chsh, ncnet
from gradcomp._dims import (
    ALICE,
    ANALYSIS,
    BOB,
    LAYER,
    SEED,
    STEP,
    TASK,
    TASK_J,
    UNIT,
    WIDTH,
)
from gradcomp._provenance import provenance
from gradcomp.analyze import conflict, correlate, lagged, oscillation, sensing

SHARED = "hidden"  # NCnet's shared layer
LABELS = {
    "conflict_share": ("share of runs with conflicting A/B gradients", "1"),
    "conflict_share_lo": ("share of conflicting runs, lower bound", "1"),
    "conflict_share_hi": ("share of conflicting runs, upper bound", "1"),
    "osc_amplitude": ("loss oscillation amplitude, seed mean", "loss"),
    "osc_amplitude_lo": ("loss oscillation amplitude, lower bound", "loss"),
    "osc_amplitude_hi": ("loss oscillation amplitude, upper bound", "loss"),
    "reversal_rate": ("share of turning points of the loss, seed mean", "1"),
    "heldout_acc": ("held-out accuracy, mean over seeds, settings and heads", "1"),
    "train_acc": ("training accuracy, mean over seeds, settings and heads", "1"),
    "unit_conflict_frequency": ("share of steps a unit is pulled apart (ranked units)", "1"),
    "unit_conflict_strength": ("mean negative per-unit cosine (ranked units)", "1"),
    UNIT: ("hidden unit, ranked by competition in its run (0 = most contested)", "1"),
}


def per_seed_s(a: xr.DataArray, b: xr.DataArray) -> xr.DataArray:
    """s_k = a11 b11 + a12 b12 + a21 b21 − a22 b22 per seed; its seed mean is S."""
    sign = xr.DataArray([[1, 1], [1, -1]], dims=(ALICE, BOB), coords={ALICE: [1, 2], BOB: [1, 2]})
    return (a.astype(float) * b.astype(float) * sign).sum((ALICE, BOB))


def _mean_ci(per_seed: xr.DataArray, name: str) -> dict[str, xr.DataArray]:
    """Seed mean with mean ± 1.96 standard errors."""
    m = per_seed.mean(SEED)
    se = per_seed.std(SEED, ddof=1) / np.sqrt(per_seed.sizes[SEED])
    return {name: m, f"{name}_lo": m - 1.96 * se, f"{name}_hi": m + 1.96 * se}


def _ranked_units(con: xr.Dataset) -> xr.Dataset:
    """Per-unit competition with units ranked within each run (seed, setting pair)."""
    pair = {LAYER: SHARED, TASK: "A", TASK_J: "B"}
    dims = (SEED, ALICE, BOB, UNIT, STEP)
    freq = con["unit_conflict_frequency"].sel(pair, drop=True).dropna(UNIT, how="all")
    strength = con["unit_conflict_strength"].sel(pair, drop=True).dropna(UNIT, how="all")
    # most contested first: descending mean conflict frequency over training, per run
    order = np.argsort(-freq.mean(STEP).transpose(*dims[:-1]).values, axis=-1, kind="stable")
    out = {}
    for name, da in (("unit_conflict_frequency", freq), ("unit_conflict_strength", strength)):
        ranked = np.take_along_axis(da.transpose(*dims).values, order[..., None], axis=-2)
        out[name] = xr.DataArray(ranked, dims=dims, coords={STEP: da[STEP]}).mean(SEED)
    coords = {ALICE: freq[ALICE].values, BOB: freq[BOB].values, UNIT: np.arange(freq.sizes[UNIT])}
    return xr.Dataset(out).assign_coords(coords)


def summarize_width(ds: xr.Dataset, args: argparse.Namespace) -> dict[str, xr.Dataset]:
    """All summaries of one width's ensemble (dims without ``width``)."""
    ds = ds.squeeze(WIDTH, drop=True)
    est = chsh.estimate(ds["a"], ds["b"], n_boot=args.n_boot)
    con = conflict(ds, window=args.conflict_window)
    osc = oscillation(ds, window=args.osc_window, spectrum=False)
    inst = con["conflicting"].sel({LAYER: SHARED, TASK: "A", TASK_J: "B"}, drop=True)
    per_seed_conflict = inst.mean((ALICE, BOB))  # share of the four runs in conflict
    traces = xr.Dataset(
        {
            **{
                k: est[k]
                for k in (
                    "S",
                    "S_lo",
                    "S_hi",
                    "p_value",
                    "delta",
                    "delta_lo",
                    "delta_hi",
                    "cbd_margin",
                    "remote_flip_fraction",
                )
            },
            **_mean_ci(per_seed_conflict, "conflict_share"),
            **_mean_ci(osc["osc_amplitude"].mean((ALICE, BOB)), "osc_amplitude"),
            "reversal_rate": osc["reversal_rate"].mean((SEED, ALICE, BOB)),
            "train_acc": ds["acc"].mean((SEED, ALICE, BOB, TASK)),
        }
    )
    if "heldout_acc" in ds:
        traces["heldout_acc"] = ds["heldout_acc"].mean((SEED, ALICE, BOB, TASK))
    kw = {"window": args.sense_window, "n_permutations": args.n_perm, "n_boot": args.n_boot}
    first = args.osc_window - 1  # the oscillation amplitude needs one full window
    out = {
        "traces": traces,
        "sensing_loss": sensing(ds, "loss", **kw),
        "sensing_oscillation": sensing(osc.isel({STEP: slice(first, None)}), "osc_amplitude", **kw),
        "per_seed": xr.Dataset(
            {
                "conflict": per_seed_conflict,
                "s": per_seed_s(ds["a"], ds["b"]),
                **(
                    {"heldout": ds["heldout_acc"].mean((ALICE, BOB, TASK))}
                    if "heldout_acc" in ds
                    else {}
                ),
            }
        ),
    }
    if "unit_gram" in ds:
        out["units"] = _ranked_units(con)
    return out


def _correlations(per_seed: xr.Dataset, traces: xr.Dataset, n_boot: int) -> xr.Dataset:
    """S against generalization and conflict: the correlation table (dim ``analysis``)."""
    end = per_seed.isel({STEP: -1})
    width = end[WIDTH].broadcast_like(end["s"])
    width.name = WIDTH
    conflict_mean = per_seed["conflict"].mean(STEP)
    per_width = correlate(end["s"], end["heldout"], SEED, n_boot=n_boot)  # one row per width
    rows = {
        "S~heldout per seed": correlate(end["s"], end["heldout"], (WIDTH, SEED), n_boot=n_boot),
        "S~heldout within width": correlate(
            end["s"], end["heldout"], (WIDTH, SEED), control=width, n_boot=n_boot
        ),
        "S~heldout across widths": correlate(
            traces["S"].isel({STEP: -1}),
            traces["heldout_acc"].isel({STEP: -1}),
            WIDTH,
            n_boot=n_boot,
        ),
        **{
            f"S~heldout at n={int(w)}": per_width.sel({WIDTH: w}, drop=True)
            for w in per_width[WIDTH].values
        },
        "conflict~S within width": correlate(
            conflict_mean, end["s"], (WIDTH, SEED), control=width, n_boot=n_boot
        ),
        "conflict~S over training": correlate(
            traces["conflict_share"],
            traces["S"],
            (WIDTH, STEP),
            serial=STEP,
            control=traces[WIDTH],
            n_boot=n_boot,
        ),
        "S~heldout over training": correlate(
            traces["S"],
            traces["heldout_acc"],
            (WIDTH, STEP),
            serial=STEP,
            control=traces[WIDTH],
            n_boot=n_boot,
        ),
    }
    table = xr.concat(
        [r.drop_attrs() for r in rows.values()],
        dim=xr.DataArray(list(rows), dims=ANALYSIS),
    )
    for k in table.data_vars:
        table[k].attrs.update(next(iter(rows.values()))[k].attrs)
    return table


def run(args: argparse.Namespace) -> xr.DataTree:
    """Train every width and the control, summarise, correlate; return the result tree."""
    common = {
        "inputs": args.inputs,
        "steps": args.steps,
        "trace_every": 1,
        "holdout": args.holdout,
        "lr": args.lr,
    }
    base = ncnet.NCnetConfig(units=True, **common)
    parts: dict[str, list[xr.Dataset]] = {}
    per_width = {}
    for w in args.widths:
        ds = ncnet.run(base, [w], args.seeds, progress=False)
        per_width[w] = summarize_width(ds, args)
        del ds
    for key in per_width[args.widths[0]]:
        parts[key] = [per_width[w][key].drop_attrs() for w in args.widths]
    tree = {
        k: xr.concat(v, dim=xr.DataArray(args.widths, dims=WIDTH, name=WIDTH), join="outer")
        for k, v in parts.items()
    }
    for k in tree:  # keep the analyzers' labels
        for name, var in per_width[args.widths[0]][k].variables.items():
            if name in tree[k].variables:
                tree[k][name].attrs.update(var.attrs)
    final_s = tree["traces"]["S"].isel({STEP: -1})
    critical = int(final_s[WIDTH].values[int(np.nanargmax(final_s.values))])
    comfortable = int(max(args.widths))
    control_cfg = ncnet.NCnetConfig(
        steps=args.steps,
        trace_every=1,
        units=False,
        holdout=args.holdout,
        lr=args.lr,
        unshared=True,
    )
    control = summarize_width(ncnet.run(control_cfg, [critical], args.seeds, progress=False), args)
    n_boot = args.n_boot
    lag = {  # does the conflict share lead the CHSH contribution?
        w: lagged(
            tree["per_seed"]["conflict"].sel({WIDTH: w}),
            tree["per_seed"]["s"].sel({WIDTH: w}),
            max_lag=args.max_lag,
            n_boot=n_boot,
        ).drop_attrs()
        for w in args.widths
    }
    nodes = {
        "traces": tree["traces"],
        "units": tree.get("units", xr.Dataset()),
        "sensing_loss": tree["sensing_loss"],
        "sensing_oscillation": tree["sensing_oscillation"],
        "lagged": xr.concat(list(lag.values()), dim=xr.DataArray(args.widths, dims=WIDTH)),
        "correlation": _correlations(tree["per_seed"], tree["traces"], n_boot),
        "control_traces": control["traces"],
        "control_sensing_loss": control["sensing_loss"],
        "control_sensing_oscillation": control["sensing_oscillation"],
    }
    attrs = provenance({"analysis": "ncnet_mechanism", **vars(args)})
    attrs.update(
        ncnet_config=str(base.to_dict()),
        critical_width=critical,
        comfortable_width=comfortable,
        critical_rule="shared width with the largest S at the last step",
        seeds=args.seeds,
    )
    for name, node in nodes.items():
        _dims.annotate(node, LABELS)
        node.attrs = {"node": name}
    return xr.DataTree.from_dict({"/": xr.Dataset(attrs=attrs), **nodes})


def report(tree: xr.DataTree) -> str:
    """The headline numbers, with intervals, as text."""
    crit = int(tree.attrs["critical_width"])
    lines = [f"critical width {crit}, comfortable width {tree.attrs['comfortable_width']}"]
    tr = tree["traces"].to_dataset().sel({WIDTH: crit}).isel({STEP: -1})
    lines.append(
        f"S(end) = {float(tr['S']):.3f} [{float(tr['S_lo']):.3f}, {float(tr['S_hi']):.3f}], "
        f"p(S > 2) = {float(tr['p_value']):.2g}, delta = {float(tr['delta']):.3f} "
        f"[{float(tr['delta_lo']):.3f}, {float(tr['delta_hi']):.3f}], "
        f"CbD margin = {float(tr['cbd_margin']):.3f}, "
        f"remote flip fraction = {float(tr['remote_flip_fraction']):.3f}"
    )
    for node in ("sensing_loss", "sensing_oscillation", "control_sensing_loss"):
        s = tree[node].to_dataset()
        s = s.sel({WIDTH: crit}) if WIDTH in s.dims else s
        best = s["accuracy"].max(STEP)
        lines.append(
            f"{node}: best accuracy per (head, own) = {np.round(best.values.ravel(), 3).tolist()}, "
            f"onset = {s['onset'].values.ravel().tolist()}"
        )
    lag = tree["lagged"].to_dataset().sel({WIDTH: crit})
    lines.append(
        f"lead asymmetry (conflict -> S) = {float(lag['lead_asymmetry']):.3f} "
        f"[{float(lag['lead_asymmetry_lo']):.3f}, {float(lag['lead_asymmetry_hi']):.3f}]"
    )
    corr = tree["correlation"].to_dataset()
    for a in corr[ANALYSIS].values:
        r = corr.sel({ANALYSIS: a})
        lines.append(
            f"{a}: r = {float(r['pearson']):.3f} [{float(r['pearson_lo']):.3f}, "
            f"{float(r['pearson_hi']):.3f}], rho = {float(r['spearman']):.3f}, "
            f"n = {int(r['n'])}, n_eff = {float(r['n_eff']):.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/ncnet_mechanism.nc")
    parser.add_argument("--tiny", action="store_true", help="2 widths, 8 seeds, 60 steps")
    parser.add_argument("--widths", type=int, nargs="+", default=[2, 3, 4, 6])
    parser.add_argument("--seeds", type=int, default=128)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--inputs", type=int, default=4)
    parser.add_argument("--holdout", type=int, default=2)
    parser.add_argument("--conflict-window", type=int, default=10)
    parser.add_argument("--osc-window", type=int, default=20)
    parser.add_argument("--sense-window", type=int, default=30)
    parser.add_argument("--max-lag", type=int, default=20)
    parser.add_argument("--n-boot", type=int, default=999)
    parser.add_argument("--n-perm", type=int, default=999)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.tiny:
        args.widths, args.seeds, args.steps = [2, 3], 8, 60
        args.conflict_window, args.osc_window, args.sense_window = 5, 8, 10
        args.max_lag, args.n_boot, args.n_perm = 3, 99, 199
    start = time.perf_counter()
    tree = run(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tree.to_netcdf(args.out, engine="h5netcdf")
    print(report(tree))
    print(f"wrote {args.out} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
