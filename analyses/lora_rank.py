"""S against LoRA rank on real multilingual words: train the ensembles, write the Datasets.

Usage::

    python analyses/lora_rank.py --tiny            # seconds on a CPU (a test runs it)
    python analyses/lora_rank.py --small           # the small CPU setting, a few minutes
    python analyses/lora_rank.py --device cuda     # the full setting (ranks 1-16, 50 seeds)

Writes ``results/lora_rank.nc`` and ``results/lora_rank_summary.nc`` (``--out`` to change);
``figures/lora_rank.py`` draws the figure from them. Same options as ``gradcomp lora``.
With ``--small`` (the committed run) it also writes the summary quoted in docs/lora.md and
README.md, ``analyses/summaries/lora_rank.json`` (other settings: ``lora_rank.json`` in ``--out``):
per rank at the last step S [interval], Δ, s_odd, the CbD margin, and per task (A1, A2, B1, B2)
the held-out accuracy (mean and sd over the runs, i.e. seeds × the remote setting) and the share
of +1 outcomes; and the word pool (size, split, each task's share of label 1).
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
from gradcomp.dims import ALICE, BOB, SEED, STEP

NAME = "lora_rank"
SUMMARY = summary.ROOT / "analyses" / "summaries" / f"{NAME}.json"
#: the estimate's variables quoted per rank
CHSH = ("S", "S_lo", "S_hi", "delta", "s_odd", "cbd_margin", "cbd_margin_lo", "cbd_margin_hi")


def values(ds: xr.Dataset, est: xr.Dataset) -> dict:
    """Summary values of the last step: per rank, the CHSH variables and the per-task outcomes."""
    end, est_end = ds.isel({STEP: -1}), est.isel({STEP: -1})
    out: dict = {"ranks": end["rank"].values, "n_seeds": int(end.sizes[SEED])}
    out.update({v: est_end[v].values for v in CHSH if v in est_end})
    tasks: dict = {}
    for head, own, remote, outcome in (("A", ALICE, BOB, "a"), ("B", BOB, ALICE, "b")):
        for setting in (1, 2):
            sel = end.sel({own: setting})
            acc = sel["heldout_acc"].sel(task=head)
            tasks[f"{head}{setting}"] = {
                "heldout_acc_mean": acc.mean((SEED, remote)).values,
                "heldout_acc_sd": acc.std((SEED, remote), ddof=1).values,
                "share_plus": (sel[outcome] == 1).mean((SEED, remote)).values,
            }
    out["tasks"] = tasks
    out["heldout_acc_mean_over_ranks"] = {
        t: float(v["heldout_acc_mean"].mean()) for t, v in tasks.items()
    }
    out["delta_min"], out["delta_max"] = float(est_end.delta.min()), float(est_end.delta.max())
    half = (est_end.S_hi - est_end.S_lo) / 2
    out["S_halfwidth_min"], out["S_halfwidth_max"] = float(half.min()), float(half.max())
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=lora.HELP)
    lora.add_arguments(parser)
    args = parser.parse_args(argv)
    load0, t0 = summary.load_average(), time.perf_counter()
    status = lora.run(args)
    if status:
        return status
    wall = time.perf_counter() - t0
    data_file, summary_file = lora.outputs(argparse.Namespace(**{**vars(args), "force": True}))
    ds = xr.open_dataset(data_file, engine="h5netcdf").load()
    est = xr.open_dataset(summary_file, engine="h5netcdf").load()
    committed = args.small and Path(args.out).resolve() == (summary.ROOT / "results").resolve()
    path = SUMMARY if committed else Path(data_file).with_suffix(".json")
    summary.write(
        path,
        {
            **values(ds, est),
            "threshold": json.loads(ds.attrs["config"])["threshold"],
            "pool": pool(lora.config_from_args(args)),
        },
        run_id=summary.new_run_id(),
        argv=["analyses/lora_rank.py", *(sys.argv[1:] if argv is None else argv)],
        timings={"wall_s": wall},
        load_start=load0,
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
