"""S against LoRA rank on real multilingual words: train the ensembles, write the Datasets.

Usage::

    python analyses/lora_rank.py --tiny            # seconds on a CPU (a test runs it)
    python analyses/lora_rank.py --cpu             # the committed CPU measurement (about an hour)
    python analyses/lora_rank.py --device cuda     # the full setting (ranks 1-16, 50 seeds)

Writes ``results/lora_rank.nc`` and ``results/lora_rank_summary.nc`` (``--out`` to change);
``figures/lora_rank.py`` draws the figure from them. Same options as ``gradcomp lora``.
With ``--cpu`` (the committed run) it also writes the summary quoted in docs/lora.md and
README.md, ``analyses/summaries/lora_rank.json`` (other settings: ``lora_rank.json`` in ``--out``):
the calibrated thresholds; per adapter condition (shared, separate) and rank at the last step
S [interval] with its half-width, Δ, s_odd, the CbD margin [interval], the flip fractions and
the seed count; S at every recorded step; per task (A1, A2, B1, B2) the held-out accuracy (mean
and sd over the runs, i.e. seeds × the remote setting) and the share of +1 outcomes per
condition; the mechanism (conflict, sensing, the within-rank links); and the word pool.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import xarray as xr

from gradcomp import summary
from gradcomp.commands import lora
from gradcomp.dims import ADAPTERS, ALICE, BOB, SEED, STEP

NAME = "lora_rank"
SUMMARY = summary.ROOT / "analyses" / "summaries" / f"{NAME}.json"
#: the estimate's variables quoted per rank
CHSH = (
    "S", "S_lo", "S_hi", "delta", "s_odd", "cbd_margin", "cbd_margin_lo", "cbd_margin_hi",
    "alice_flip_fraction", "bob_flip_fraction", "n_seeds", "p_value",
)  # fmt: skip
LINKS = ("generalization", "conflict_cosine", "osc_amplitude")


def _conditions(ds: xr.Dataset) -> list[str | None]:
    return list(ds[ADAPTERS].values) if ADAPTERS in ds.dims else [None]


def _sel(ds: xr.Dataset, condition: str | None) -> xr.Dataset:
    return ds if condition is None else ds.sel({ADAPTERS: condition}, drop=True)


def chsh_values(est: xr.Dataset) -> dict:
    """The CHSH variables at the last step per rank, the half-widths and S at every step."""
    end = est.isel({STEP: -1})
    out: dict = {v: end[v].values for v in CHSH if v in end}
    half = (end.S_hi - end.S_lo) / 2
    out["S_halfwidth"] = half.values
    out["S_halfwidth_max"] = float(half.max())
    out["S_over_steps"] = est["S"].values  # (rank, step)
    out["S_min"], out["S_max"] = float(end.S.min()), float(end.S.max())
    out["S_hi_max"], out["S_lo_min"] = float(end.S_hi.max()), float(end.S_lo.min())
    out["delta_min"], out["delta_max"] = float(end.delta.min()), float(end.delta.max())
    out["cbd_margin_min"] = float(end.cbd_margin.min())
    out["cbd_margin_max"] = float(end.cbd_margin.max())
    out["cbd_margin_hi_max"] = float(end.cbd_margin_hi.max())
    return out


def task_values(end: xr.Dataset) -> dict:
    """Per task: held-out accuracy (mean, sd over seeds × remote setting), share of +1."""
    tasks: dict = {}
    for head, own, remote, outcome in (("A", ALICE, BOB, "a"), ("B", BOB, ALICE, "b")):
        for setting in (1, 2):
            sel = end.sel({own: setting})
            ok = sel[outcome].notnull()
            acc = sel["heldout_acc"].sel(task=head).where(ok)
            tasks[f"{head}{setting}"] = {
                "heldout_acc_mean": acc.mean((SEED, remote)).values,
                "heldout_acc_sd": acc.std((SEED, remote), ddof=1).values,
                "share_plus": (
                    (sel[outcome] == 1).sum((SEED, remote)) / ok.sum((SEED, remote))
                ).values,
            }
    return tasks


def values(ds: xr.Dataset, est: xr.Dataset) -> dict:
    """Summary values: thresholds, CHSH per condition and rank, tasks, mechanism."""
    end = ds.isel({STEP: -1})
    out: dict = {
        "ranks": end["rank"].values,
        "n_seeds": int(end.sizes[SEED]),
        "steps": ds[STEP].values,
        "thresholds": json.loads(ds.attrs["thresholds"]),
        "thresholds_from": ds.attrs.get("thresholds_from", ""),
    }
    if "calibration" in ds.attrs:
        cal = json.loads(ds.attrs["calibration"])
        out["calibration"] = {
            "n_seeds": len(cal["seeds"]),
            "first_seed": cal["seeds"][0],
            "rank": cal["rank"],
            "share_reached": {t: v["share_reached"] for t, v in cal["tasks"].items()},
        }
    for c in _conditions(ds):
        key = c or "shared"
        out[key] = chsh_values(_sel(est, c))
        out[key]["tasks"] = task_values(_sel(end, c))
    shared = _sel(est, "shared" if ADAPTERS in est.dims else None).isel({STEP: -1})
    mech = {}
    for name in ("conflict_cosine", "conflict_frequency", "generalization"):
        if name in est:
            mech[name] = est[name].isel({STEP: -1}).values
    if "sensing_accuracy" in est:
        mech["sensing_accuracy"] = est["sensing_accuracy"].values  # (rank, task)
    for name in LINKS:
        for pre in ("r_S_", "rho_S_", "n_eff_S_"):
            if f"{pre}{name}" in est:
                mech[f"{pre}{name}"] = float(est[f"{pre}{name}"])
        if f"r_S_{name}_lo" in est:
            mech[f"r_S_{name}_lo"] = float(est[f"r_S_{name}_lo"])
            mech[f"r_S_{name}_hi"] = float(est[f"r_S_{name}_hi"])
    out["mechanism"] = mech
    out["S_shared_max"] = float(shared.S.max())
    out["any_S_lo_above_2"] = bool((shared.S_lo > 2).any())
    return out


def pool(cfg) -> dict:  # cfg: LoraExperiment
    """The word pool of the run: its size, the split, and each task's share of label 1."""
    words = cfg.words()
    return {
        "n_words": len(words.words),
        "n_train": words.n_train,
        "n_heldout": len(words.words) - words.n_train,
        "share_label_1": {t: float(v.float().mean()) for t, v in words.labels.items()},
    }


def add_seeds(
    ds: xr.Dataset, n: int, *, n_boot: int, partial: Path
) -> tuple[xr.Dataset, xr.Dataset, float]:
    """``ds`` with ``n`` more measured seeds (shared adapters), trained now, and its summary.

    The new seeds follow the last one; the configuration is ``ds``'s, so the calibration (same
    calibration seeds and rank) gives the same thresholds, which is checked. A seed's run depends
    only on (configuration, rank, seed): the result is the run with the larger seed count, except
    that the control keeps its seeds.
    """
    import dataclasses

    from gradcomp.lora import LoraExperiment, run
    from gradcomp.lora.summary import summarize

    cfg = json.loads(ds.attrs["config"])
    fields = {f.name for f in dataclasses.fields(LoraExperiment)}
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items() if k in fields}
    first = int(ds[SEED].values[-1]) + 1
    kw.update(first_seed=first, n_seeds=n, control_seeds=0)
    start = time.perf_counter()
    extra = run(LoraExperiment(**kw), progress=True, partial=partial)
    wall = time.perf_counter() - start
    if extra.attrs["thresholds"] != ds.attrs["thresholds"]:
        raise ValueError("the calibration of the added seeds gave other thresholds")
    if ADAPTERS in ds.dims:
        extra = extra.expand_dims({ADAPTERS: ["shared"]})
    merged = xr.concat(
        [ds, extra], dim=SEED, join="outer", combine_attrs="override", data_vars="all"
    )
    merged["diverged"] = merged["diverged"].fillna(False).astype(bool)
    cfg["n_seeds"] = int(merged.sizes[SEED])
    cfg["control_seeds"] = (
        int(ds.sizes[SEED]) if cfg.get("control_seeds") is None else cfg["control_seeds"]
    )
    merged.attrs["config"] = json.dumps(cfg)
    merged.attrs["seed_blocks"] = (
        f"seeds {int(ds[SEED][0])}-{first - 1} and {first}-{first + n - 1} trained in two runs"
    )
    return merged, summarize(merged, n_boot=n_boot), wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=lora.HELP)
    lora.add_arguments(parser)
    parser.add_argument(
        "--summary-only",
        action="store_true",
        help="rewrite the JSON summary from the files in --out (no training; timings kept)",
    )
    parser.add_argument(
        "--add-seeds",
        type=int,
        default=0,
        help="train N more seeds onto the run in --out and rewrite its files (the committed "
        "--cpu run: 150 seeds, then --add-seeds 50)",
    )
    args = parser.parse_args(argv)
    load0, t0 = summary.load_average(), time.perf_counter()
    data_file, summary_file = lora.outputs(argparse.Namespace(**{**vars(args), "force": True}))
    committed = args.cpu and Path(args.out).resolve() == (summary.ROOT / "results").resolve()
    path = SUMMARY if committed else Path(data_file).with_suffix(".json")
    walls, command = {}, ["analyses/lora_rank.py", *(sys.argv[1:] if argv is None else argv)]
    if args.summary_only:  # the summary of the run that made the files: its command, timings
        ds = xr.open_dataset(data_file, engine="h5netcdf").load()
        est = xr.open_dataset(summary_file, engine="h5netcdf").load()
        before = summary.read(path)
        walls, command = before["timings"], before["command"].split()[1:]
    elif args.add_seeds:
        ds = xr.open_dataset(data_file, engine="h5netcdf").load()
        ds, est, walls["added_seeds_wall_s"] = add_seeds(
            ds, args.add_seeds, n_boot=args.n_boot, partial=Path(args.out) / "lora_rank.extra"
        )
        ds.to_netcdf(data_file, engine="h5netcdf")
        est.to_netcdf(summary_file, engine="h5netcdf")
        walls["wall_s"] = summary.read(path)["timings"]["wall_s"] if path.exists() else 0.0
    else:
        status = lora.run(args)
        if status:
            return status
        walls["wall_s"] = time.perf_counter() - t0
        ds = xr.open_dataset(data_file, engine="h5netcdf").load()
        est = xr.open_dataset(summary_file, engine="h5netcdf").load()
    summary.write(
        path,
        {**values(ds, est), "pool": pool(lora.config_from_args(args))},
        run_id=summary.new_run_id(),
        argv=command,
        timings=walls,
        load_start=load0,
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
