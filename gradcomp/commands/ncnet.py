"""``gradcomp ncnet``: the NCnet capacity experiment (S across hidden width, with its control)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from gradcomp.commands._common import (
    NETCDF_SUFFIXES,
    CommandError,
    check_device,
    check_output,
    figure_formats,
    fraction,
    positive_float,
    positive_int,
)

NAME = "ncnet"
HELP = (
    "Train NCnet ensembles across hidden widths; print S (CHSH) with intervals, the signaling "
    "measure and the CbD margin per width; write a netCDF dataset and the capacity figure."
)

DEFAULT_SEEDS = 500
#: the options passed to NCnetConfig under their own name (besides --alice and --bob, as tuples)
_CONFIG_OPTIONS = (
    *("inputs", "activation", "lr", "steps", "init_scale", "unshared", "holdout"),
    *("trace_every", "units", "dtype"),
)


def parse_widths(text: str) -> list[int]:
    """``"1-8"``, ``"1,2,4"`` or ``"1-4,8"`` -> sorted distinct widths."""
    out: set[int] = set()
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if lo > hi:
                    raise ValueError
                out.update(range(lo, hi + 1))
            elif part:
                out.add(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"bad widths {text!r}: use a range '1-8', a list '1,2,4' or both '1-4,8'"
        ) from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"widths must be positive integers, got {text!r}")
    return sorted(out)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from gradcomp.ncnet import DEFAULT_ALICE, DEFAULT_BOB, ENGINES, KEEP_BITS

    p.add_argument(
        "--widths",
        type=parse_widths,
        default=parse_widths("1-8"),
        help="hidden widths: range and/or list, e.g. 1-8 or 1,2,4 (default 1-8)",
    )
    p.add_argument(
        "--seeds",
        type=positive_int,
        default=DEFAULT_SEEDS,
        help=f"seeds per setting pair (default {DEFAULT_SEEDS})",
    )
    p.add_argument("--steps", type=int, default=2000, help="full-batch steps (default 2000)")
    p.add_argument("--lr", type=positive_float, default=0.5, help="learning rate (default 0.5)")
    p.add_argument("--inputs", type=int, default=3, help="number of binary inputs k (default 3)")
    p.add_argument(
        "--alice",
        nargs=2,
        metavar="EXPR",
        default=list(DEFAULT_ALICE),
        help=f"Alice's tasks for settings 1 and 2 (default {' ; '.join(DEFAULT_ALICE)})",
    )
    p.add_argument(
        "--bob",
        nargs=2,
        metavar="EXPR",
        default=list(DEFAULT_BOB),
        help=f"Bob's tasks for settings 1 and 2 (default {' ; '.join(DEFAULT_BOB)})",
    )
    p.add_argument("--activation", default="tanh", choices=("tanh", "relu", "sigmoid"))
    p.add_argument(
        "--init-scale", type=positive_float, default=1.0, help="weight std x sqrt(fan_in)"
    )
    p.add_argument("--holdout", type=int, default=0, help="number of held-out input patterns")
    p.add_argument(
        "--unshared",
        action="store_true",
        help="main experiment with unshared hidden layers (each head its own n units)",
    )
    p.add_argument("--no-control", action="store_true", help="skip the unshared control run")
    p.add_argument(
        "--trace-every",
        type=int,
        default=None,
        help="trace every N steps (default: ~30 log-spaced steps)",
    )
    p.add_argument("--units", action="store_true", help="also trace the per-unit Gram")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument(
        "--engine",
        default="auto",
        choices=ENGINES,
        help="training engine: c (compiled kernel, CPU), torch (hand-derived, any device), "
        "vmap or loop (autograd, slow), or auto (c on the CPU when a C compiler is found; "
        "default)",
    )
    p.add_argument("--backend", default=None, help=argparse.SUPPRESS)  # removed: see run()
    p.add_argument("--chunk", type=positive_int, default=512, help="seeds per vectorised chunk")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.add_argument("--n-boot", type=positive_int, default=2000, help="bootstrap replicates")
    p.add_argument("--confidence", type=positive_float, default=0.95, help="interval level")
    p.add_argument(
        "--max-diverged",
        type=fraction,
        default=0.05,
        help="largest share of diverged runs (non-finite loss or parameters) per width before "
        "refusing; below it they are left out of S and counted in the table (default 0.05)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("results/ncnet.nc"),
        help="netCDF output file (.nc; default results/ncnet.nc)",
    )
    p.add_argument(
        "--figure",
        default=None,
        help="figure file (format by suffix: .png, .pdf, .svg, ...; default: next to --out, "
        "OUT_capacity.png); 'none' to skip",
    )
    p.add_argument(
        "--force", action="store_true", help="overwrite --out and --figure if they exist"
    )
    p.add_argument(
        "--keep-bits",
        type=int,
        default=KEEP_BITS,
        choices=range(1, 24),
        metavar="K",
        help=f"mantissa bits kept of the stored loss and Gram traces (default {KEEP_BITS}: "
        f"relative error ≤ 2^-{KEEP_BITS + 1}; 23 stores them bit for bit). Outcomes and "
        "estimates are never rounded",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def outputs(args: argparse.Namespace) -> tuple[Path, Path | None]:
    """The checked ``(data file, figure file or None)`` of ``args``; raises before any work."""
    out = check_output(Path(args.out), flag="--out", suffixes=NETCDF_SUFFIXES, force=args.force)
    if args.figure is not None and str(args.figure).lower() == "none":
        return out, None
    fig = Path(args.figure) if args.figure else out.with_name(f"{out.stem}_capacity.png")
    if "\x00" not in str(fig) and fig.resolve() == out.resolve():  # check_output refuses NUL
        raise CommandError(f"--figure {fig} is the --out file; give another name", status=2)
    return out, check_output(fig, flag="--figure", suffixes=figure_formats(), force=args.force)


def run(args: argparse.Namespace) -> int:
    import torch

    from gradcomp.commands._common import save
    from gradcomp.ncnet import NCnetConfig, capacity_run
    from gradcomp.ncnet import save as save_dataset

    # every check before training: results are never computed only to be lost
    if not args.confidence < 1:
        raise CommandError(f"--confidence must be in (0, 1), got {args.confidence}", status=2)
    if args.n_boot < 10:
        raise CommandError(f"--n-boot must be at least 10, got {args.n_boot}", status=2)
    try:
        config = NCnetConfig(
            alice=tuple(args.alice),
            bob=tuple(args.bob),
            **{name: getattr(args, name) for name in _CONFIG_OPTIONS},
        )
    except ValueError as err:
        raise CommandError(str(err), status=2) from None
    if args.backend is not None:
        raise CommandError(f"--backend is now --engine (--engine {args.backend})", status=2)
    check_device(args.device)
    if args.engine == "c" and torch.device(args.device).type != "cpu":
        raise CommandError("--engine c runs on the CPU only: use --engine torch", status=2)
    if args.seeds < 2:
        raise CommandError(f"--seeds: need at least 2 seeds, got {args.seeds}", status=2)
    out, fig = outputs(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    try:
        result = capacity_run(
            config,
            args.widths,
            args.seeds,
            control=not args.no_control,
            n_boot=args.n_boot,
            confidence=args.confidence,
            device=args.device,
            chunk=args.chunk,
            progress=not args.no_progress,
            engine=args.engine,
            max_diverged=args.max_diverged,
        )
    except ValueError as err:
        raise CommandError(str(err)) from None
    ds = result.dataset

    # the data first: nothing after training may lose them
    # compact: int8 outcomes, gzip; read it back with gradcomp.ncnet.open_dataset
    def write(path: Path) -> None:
        save_dataset(ds, path, keep_bits=args.keep_bits)

    save(write, out, what="the dataset", name="ncnet")
    print(result.table)  # the result: the only output on stdout
    print(f"engine: {ds.attrs['engine']}", file=sys.stderr)
    print(f"wrote {out}", file=sys.stderr)
    if fig is not None:
        from gradcomp.plot.chsh import figure

        def draw(path: Path) -> None:
            figure(ds).savefig(path, dpi=150, format=path.suffix[1:].lower())

        try:
            save(draw, fig, what="the figure", name="ncnet_capacity")
        except CommandError as err:
            raise CommandError(
                f"{err.message} (the data are in {out}; gradcomp.plot.chsh.figure redraws it)"
            ) from None
        print(f"wrote {fig}", file=sys.stderr)
    print(f"done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0
