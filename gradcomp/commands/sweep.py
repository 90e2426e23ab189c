"""``gradcomp sweep``: run a grid of NCnet (or any experiment's) chunks on Dask into a store.

Example::

    gradcomp sweep --store results/pd --axis width=2,3,4 --axis lr=0.1,0.5 --seeds 0:2000
    gradcomp sweep --store results/pd ... --scheduler tcp://10.0.0.5:8786   # any Dask cluster

Rerunning the same command resumes: finished chunks are skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
from typing import Any

from gradcomp.commands._common import CommandError, nonnegative_int, positive_float, positive_int

NAME = "sweep"
HELP = "run a grid (axes × seed chunks) on Dask into a crash-safe, resumable store"

EXPERIMENTS = ("ncnet", "lora", "toy")


def _value(text: str) -> Any:
    """A number (``2``, ``0.5``, ``1e-3``, ``.5``; never ``nan`` or ``inf``), JSON (``true``,
    ``[1, 2]``, ``"x"``) or else the text itself."""
    for parse in (int, float):
        try:
            value = parse(text)
        except ValueError:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        return value
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _axis(text: str) -> tuple[str, list[Any]]:
    name, sep, values = text.partition("=")
    if not sep or not name or not values:
        raise argparse.ArgumentTypeError(f"--axis takes NAME=V1,V2,..., got {text!r}")
    try:
        return name, [_value(v.strip()) for v in values.split(",")]
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(f"--axis {name}: {err}") from None


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
    parser.add_argument("--seeds-per-chunk", type=positive_int, default=250)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="experiment config field (repeatable), e.g. steps=500; for ncnet also device=, "
        "engine=torch|c|vmap|loop, threads=, keep=a+b+acc (variables to store)",
    )
    parser.add_argument(
        "--scheduler",
        default=None,
        help="tcp://HOST:PORT of a running Dask scheduler (default: a LocalCluster)",
    )
    parser.add_argument(
        "--workers", type=positive_int, default=None, help="LocalCluster worker processes"
    )
    parser.add_argument("--retries", type=nonnegative_int, default=2)
    parser.add_argument(
        "--connect-timeout",
        type=positive_float,
        default=5.0,
        help="seconds to reach --scheduler before giving up (default 5)",
    )
    parser.add_argument("--no-progress", action="store_true")


def make_experiment(name: str, settings: dict[str, Any]) -> Any:
    """The experiment object named ``name`` with config fields ``settings``.

    Raises:
        ValueError: unknown experiment or setting, or a setting its config refuses.
    """
    from gradcomp.scaleout import NCnetExperiment, Toy

    def build(cls: Any, kw: dict[str, Any]) -> Any:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kw) - known)
        if unknown:
            raise ValueError(
                f"unknown --set key(s) {', '.join(unknown)} for {name}; "
                f"known: {', '.join(sorted(known))}"
            )
        try:
            return cls(**kw)
        except TypeError as err:  # a value of the wrong type
            raise ValueError(f"--set for {name}: {err}") from None

    if name == "toy":
        return build(Toy, settings)
    if name == "ncnet":
        from gradcomp.ncnet import NCnetConfig

        if "backend" in settings:
            raise ValueError("--set backend= is now --set engine= (torch, c, vmap or loop)")
        extra: dict[str, Any] = {
            k: settings.pop(k) for k in ("device", "engine", "threads") if k in settings
        }
        if "keep" in settings:
            keep = settings.pop("keep")
            extra["keep"] = tuple(keep.split("+") if isinstance(keep, str) else keep)
        for key in ("alice", "bob"):
            if key in settings:
                settings[key] = tuple(settings[key])
        return NCnetExperiment(build(NCnetConfig, settings), **extra)
    if name == "lora":
        from gradcomp.lora import LoraExperiment
        from gradcomp.scaleout import LoraSweepExperiment

        keep = settings.pop("keep", "")
        keep = tuple(keep.split("+") if isinstance(keep, str) and keep else keep)
        return LoraSweepExperiment(build(LoraExperiment, settings), keep=keep)
    module, sep, attr = name.partition(":")
    if not sep:
        raise ValueError(
            f"unknown experiment {name!r}; use {', '.join(EXPERIMENTS)} or module:factory"
        )
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"--experiment {name}: {type(err).__name__}: {err}") from None
    try:
        return factory(**settings)
    except TypeError as err:  # e.g. an unknown --set key
        raise ValueError(f"--experiment {name}: {err}") from None


def run(args: argparse.Namespace) -> int:
    from gradcomp.scaleout import sweep

    settings = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CommandError(f"--set takes KEY=VALUE, got {item!r}", status=2)
        try:
            settings[key] = _value(value)
        except argparse.ArgumentTypeError as err:
            raise CommandError(f"--set {key}: {err}", status=2) from None
    try:
        experiment = make_experiment(args.experiment, settings)
    except ValueError as err:
        raise CommandError(str(err), status=2) from None
    try:
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
        raise CommandError(
            f"interrupted; finished chunks are kept in {args.store}: rerun to resume", status=130
        ) from None
    except (ValueError, TypeError) as err:  # bad input or a store of another configuration
        raise CommandError(str(err), status=2) from None
    except (OSError, RuntimeError) as err:  # no scheduler, a full disk, failed chunks
        raise CommandError(str(err)) from None
    print(f"{args.store}: {dict(ds.sizes)}")
    return 0
