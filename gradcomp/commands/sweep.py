"""``gradcomp sweep``: run a grid of NCnet (or any experiment's) chunks on Dask into a store.

Example::

    gradcomp sweep --store results/pd --axis width=2,3,4 --axis lr=0.1,0.5 --seeds 0:2000
    gradcomp sweep --store results/pd ... --scheduler tcp://10.0.0.5:8786   # any Dask cluster

Rerunning the same command resumes: finished chunks are skipped.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any

NAME = "sweep"
HELP = "run a grid (axes × seed chunks) on Dask into a crash-safe, resumable store"

EXPERIMENTS = ("ncnet", "lora", "toy")


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _axis(text: str) -> tuple[str, list[Any]]:
    name, sep, values = text.partition("=")
    if not sep or not name or not values:
        raise argparse.ArgumentTypeError(f"--axis takes NAME=V1,V2,..., got {text!r}")
    return name, [_value(v) for v in values.split(",")]


def _seeds(text: str) -> range:
    start, sep, stop = text.partition(":")
    try:
        return range(int(start), int(stop)) if sep else range(int(start))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes N or START:STOP, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, help="directory of the chunk store")
    parser.add_argument(
        "--experiment",
        default="ncnet",
        help=f"one of {', '.join(EXPERIMENTS)}, or module:factory returning an experiment",
    )
    parser.add_argument(
        "--axis",
        action="append",
        type=_axis,
        default=[],
        metavar="NAME=V1,V2",
        help="a grid axis (repeatable), e.g. width=2,3,4 or lr=0.1,0.5",
    )
    parser.add_argument("--seeds", type=_seeds, default=range(2000), help="N or START:STOP")
    parser.add_argument("--seeds-per-chunk", type=int, default=250)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="experiment config field (repeatable), e.g. steps=500; for ncnet also device=, "
        "backend=torch|c, threads=, keep=a+b+acc (variables to store)",
    )
    parser.add_argument("--scheduler", default=None, help="tcp://HOST:PORT of a Dask scheduler")
    parser.add_argument("--workers", type=int, default=None, help="LocalCluster worker processes")
    parser.add_argument("--retries", type=int, default=2)
    parser.add_argument("--connect-timeout", type=float, default=5.0)
    parser.add_argument("--no-progress", action="store_true")


def make_experiment(name: str, settings: dict[str, Any]) -> Any:
    """The experiment object named ``name`` with config fields ``settings``."""
    from gradcomp.scaleout import NCnetExperiment, Toy

    if name == "toy":
        return Toy(**settings)
    if name == "ncnet":
        from gradcomp.ncnet import NCnetConfig

        extra: dict[str, Any] = {
            k: settings.pop(k) for k in ("device", "backend", "threads") if k in settings
        }
        if "keep" in settings:
            keep = settings.pop("keep")
            extra["keep"] = tuple(keep.split("+") if isinstance(keep, str) else keep)
        for key in ("alice", "bob"):
            if key in settings:
                settings[key] = tuple(settings[key])
        return NCnetExperiment(NCnetConfig(**settings), **extra)
    if name == "lora":
        from gradcomp.lora import LoraExperiment
        from gradcomp.scaleout import LoraSweepExperiment

        keep = settings.pop("keep", "")
        keep = tuple(keep.split("+") if isinstance(keep, str) and keep else keep)
        return LoraSweepExperiment(LoraExperiment(**settings), keep=keep)
    module, sep, attr = name.partition(":")
    if not sep:
        raise ValueError(f"unknown experiment {name!r}; use {EXPERIMENTS} or module:factory")
    return getattr(importlib.import_module(module), attr)(**settings)


def run(args: argparse.Namespace) -> int:
    from gradcomp.scaleout import sweep

    settings = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"error: --set takes KEY=VALUE, got {item!r}", file=sys.stderr)
            return 2
        settings[key] = _value(value)
    try:
        experiment = make_experiment(args.experiment, settings)
        ds = sweep(
            experiment,
            args.store,
            axes=dict(args.axis),
            seeds=args.seeds,
            seeds_per_chunk=args.seeds_per_chunk,
            scheduler=args.scheduler,
            n_workers=args.workers,
            retries=args.retries,
            connect_timeout=args.connect_timeout,
            progress=not args.no_progress,
        )
    except KeyboardInterrupt:
        print(
            f"interrupted; finished chunks are kept in {args.store}: rerun to resume",
            file=sys.stderr,
        )
        return 130
    except (ValueError, OSError, RuntimeError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{args.store}: {dict(ds.sizes)}")
    return 0
