"""``gradcomp lora``: S against LoRA rank on real multilingual words (pretrained encoder, offline).

Writes ``<out>/lora_rank.nc`` (the ensemble: outcomes, losses, accuracies, LoRA Gram statistics
over ``rank, seed, alice, bob, step``) and ``<out>/lora_rank_summary.nc`` (S with its interval,
delta, conflict, oscillation, sensing, generalization and their links per rank), and prints S per
rank at the end of training.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from gradcomp.commands._common import (
    CommandError,
    check_device,
    check_output,
    finite_float,
    nonnegative_int,
    positive_float,
    positive_int,
)

NAME = "lora"
HELP = "Train LoRA ensembles over ranks x settings x seeds on real words; estimate S per rank."


def _tasks(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, spec = item.partition("=")
        if not sep or name not in ("A1", "A2", "B1", "B2"):
            raise argparse.ArgumentTypeError(f"--task takes A1=SPEC, A2=, B1= or B2=, got {item!r}")
        out[name] = spec
    return out


def _layers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--layers takes comma-separated layer indices, e.g. -1 or 4,5; got {text!r}"
        ) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--tiny", action="store_true", help="smoke setting (under a minute, CPU)")
    size.add_argument("--small", action="store_true", help="small CPU setting (a few minutes)")
    size.add_argument(
        "--cpu", action="store_true", help="the committed CPU measurement (about an hour)"
    )
    parser.add_argument("--model", help="local model directory (default: bundled MiniLM)")
    parser.add_argument(
        "--num-layers", type=positive_int, help="keep only the first N encoder layers"
    )
    parser.add_argument(
        "--ranks", type=positive_int, nargs="+", help="LoRA ranks (default 1 2 4 8 16)"
    )
    parser.add_argument("--seeds", type=positive_int, help="seeds per rank and setting pair")
    parser.add_argument("--steps", type=positive_int, help="training steps")
    parser.add_argument("--lr", type=positive_float, help="Adam learning rate")
    parser.add_argument("--batch-size", type=nonnegative_int, help="words per step (0: full batch)")
    parser.add_argument("--every", type=positive_int, help="record statistics every k steps")
    parser.add_argument(
        "--threshold",
        type=finite_float,
        help="accuracy every head needs for outcome +1 (default: calibrated per task)",
    )
    parser.add_argument(
        "--calibration-seeds",
        type=nonnegative_int,
        help="calibrate each task's threshold on this many seeds from 100000 (default 40)",
    )
    parser.add_argument(
        "--control-seeds",
        type=nonnegative_int,
        help="train the separate-adapter control on the first N seeds (default: all; 0: none)",
    )
    parser.add_argument(
        "--layers",
        type=_layers,
        help="encoder layers to adapt, e.g. -1 or 4,5 (negative: from the end; default: all)",
    )
    parser.add_argument("--outcome-on", choices=["heldout", "train"], help="accuracy of outcome")
    parser.add_argument("--languages", nargs="+", help="wordfreq language codes")
    parser.add_argument("--task", action="append", default=[], help="e.g. A2=freq:4.5")
    parser.add_argument("--per-language", type=positive_int, help="words drawn per language")
    parser.add_argument("--ffn", action="store_true", help="also adapt feed-forward projections")
    parser.add_argument("--method", choices=["auto", "vmap", "loop"], help="ensemble method")
    parser.add_argument("--device", help="torch device, e.g. cuda")
    parser.add_argument("--n-boot", type=positive_int, default=999, help="bootstrap resamples")
    parser.add_argument(
        "--out",
        default="results",
        help="output directory (default results/): lora_rank.nc and lora_rank_summary.nc",
    )
    parser.add_argument(
        "--force", action="store_true", help="overwrite the output files if they exist"
    )


def config_from_args(args: argparse.Namespace):  # -> LoraExperiment
    from gradcomp.lora import LoraExperiment
    from gradcomp.lora.data import DEFAULT_TASKS

    fields = {
        "model": args.model,
        "num_layers": args.num_layers,
        "ranks": tuple(args.ranks) if args.ranks else None,
        "n_seeds": args.seeds,
        "steps": args.steps,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "every": args.every,
        "threshold": args.threshold,
        "calibration_seeds": args.calibration_seeds,
        "control_seeds": args.control_seeds,
        "layers": args.layers,
        "outcome_on": args.outcome_on,
        "languages": tuple(args.languages) if args.languages else None,
        "per_language": args.per_language,
        "method": args.method,
        "device": args.device,
    }
    kw = {k: v for k, v in fields.items() if v is not None}
    if kw.get("batch_size") == 0:
        kw["batch_size"] = None
    if args.ffn:
        kw["ffn"] = True
    if args.task:
        kw["tasks"] = {**DEFAULT_TASKS, **_tasks(args.task)}
    if args.tiny:
        return LoraExperiment.tiny(**kw)
    if args.small:
        return LoraExperiment.small(**kw)
    if args.cpu:
        return LoraExperiment.cpu(**kw)
    return LoraExperiment(**kw)


def outputs(args: argparse.Namespace) -> tuple[Path, Path]:
    """The checked ``(dataset file, summary file)`` in ``--out``; raises before any work."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CommandError(f"--out {out} is a file; --out names a directory", status=2)
    return (
        check_output(out / "lora_rank.nc", flag="--out", suffixes=(".nc",), force=args.force),
        check_output(
            out / "lora_rank_summary.nc", flag="--out", suffixes=(".nc",), force=args.force
        ),
    )


def check(cfg) -> None:  # cfg: LoraExperiment
    """The experiment's own checks, and the languages, as one-line errors (cheap: no model)."""
    from gradcomp.lora.data import validate_languages

    try:
        cfg.validate()
        validate_languages(list(cfg.languages))
        cfg.check_model()
    except ValueError as err:
        raise CommandError(str(err), status=2) from None


def run(args: argparse.Namespace) -> int:
    import torch

    from gradcomp.commands._common import save
    from gradcomp.lora import run as run_experiment
    from gradcomp.lora.summary import summarize

    if args.n_boot < 10:
        raise CommandError(f"--n-boot must be at least 10, got {args.n_boot}", status=2)
    try:
        cfg = config_from_args(args)
    except (ValueError, argparse.ArgumentTypeError) as err:
        raise CommandError(str(err), status=2) from None
    check(cfg)
    check_device(cfg.device)
    data_file, summary_file = outputs(args)
    if args.device is None or args.device == "cpu":
        torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    try:
        ds = run_experiment(cfg, progress=True, partial=Path(args.out) / "lora_rank.partial")
    except ValueError as err:  # the model, tasks and adapters are checked before training
        raise CommandError(str(err)) from None
    save(lambda p: ds.to_netcdf(p, engine="h5netcdf"), data_file, what="the ensemble", name="lora")
    try:
        summary = summarize(ds, n_boot=args.n_boot)
    except ValueError as err:
        raise CommandError(f"{err} (the ensemble is in {data_file})") from None
    save(
        lambda p: summary.to_netcdf(p, engine="h5netcdf"),
        summary_file,
        what="the summary",
        name="lora_summary",
    )
    end = summary.isel(step=-1)
    conditions = end["adapters"].values if "adapters" in end.dims else [None]
    print(
        f"{'adapters':>9} {'rank':>5} {'seeds':>5} {'S':>7} {'S_lo':>7} {'S_hi':>7} "
        f"{'delta':>7} {'margin':>7} {'held-out acc':>13}"
    )
    for c in conditions:
        for r in end["rank"].values:
            e = end.sel(rank=r) if c is None else end.sel(rank=r, adapters=c)
            print(
                f"{c or 'shared'!s:>9} {int(r):>5} {int(e.n_seeds):>5} {float(e.S):7.3f} "
                f"{float(e.S_lo):7.3f} {float(e.S_hi):7.3f} {float(e.delta):7.3f} "
                f"{float(e.cbd_margin):7.3f} {float(e.generalization):13.3f}"
            )
    print(f"method: {ds.attrs['method']}; config: {dataclasses.asdict(cfg)}", file=sys.stderr)
    print(f"wrote {data_file} and {summary_file}", file=sys.stderr)
    return 0
