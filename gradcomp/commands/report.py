"""``gradcomp report RUN``: a one-page figure (PNG and PDF) of what a gradcomp Dataset holds.

RUN is a netCDF file (``.nc``, ``.nc4``, ``.h5``) or a Zarr store (a ``.zarr`` directory) holding
a recording (``gradcomp.record``), an ensemble (``gradcomp ncnet``, ``gradcomp lora``) or a
sweep's output. The panels (:func:`gradcomp.plot.report.panels`) follow the variables it holds.
Writes ``PREFIX.png`` and ``PREFIX.pdf`` (default prefix: RUN's path without its suffix plus
``_report``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gradcomp.commands._common import NETCDF_SUFFIXES, CommandError, check_output, save

NAME = "report"
HELP = "Draw a one-page figure (PNG and PDF) of a recording, an ensemble or a sweep's output."

ZARR_SUFFIX = ".zarr"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="netCDF file (.nc) or Zarr store (.zarr)")
    parser.add_argument(
        "--out",
        metavar="PREFIX",
        help="output prefix: writes PREFIX.png and PREFIX.pdf (default: RUN_report next to RUN)",
    )
    parser.add_argument("--title", help="figure title (default: the experiment and its sizes)")
    parser.add_argument("--dpi", type=int, default=150, help="PNG resolution (default 150)")
    parser.add_argument("--force", action="store_true", help="overwrite the figures if they exist")


def outputs(run: Path, prefix: str | None, force: bool) -> tuple[Path, Path]:
    """The checked ``(png, pdf)`` paths; raises before the Dataset is read."""
    if prefix is None:
        base = run.with_name(f"{run.stem}_report")
    else:
        base = Path(prefix)
        if base.suffix.lower() in (".png", ".pdf"):
            base = base.with_suffix("")
    return (
        check_output(base.with_name(base.name + ".png"), flag="--out", suffixes=(".png",),
                     force=force),
        check_output(base.with_name(base.name + ".pdf"), flag="--out", suffixes=(".pdf",),
                     force=force),
    )  # fmt: skip


def open_run(run: Path):  # -> xr.Dataset
    """Open RUN (netCDF or Zarr) lazily; a :class:`CommandError` for anything unreadable."""
    import xarray as xr

    if not run.exists():
        raise CommandError(f"RUN {run} does not exist", status=2)
    zarr = run.is_dir() or run.suffix.lower() == ZARR_SUFFIX
    if not zarr and run.suffix.lower() not in NETCDF_SUFFIXES:
        raise CommandError(
            f"RUN {run}: unknown suffix {run.suffix or '(none)'!r}; give a netCDF file "
            f"({', '.join(NETCDF_SUFFIXES)}) or a Zarr store ({ZARR_SUFFIX})",
            status=2,
        )
    try:
        if zarr:
            return xr.open_dataset(run, engine="zarr")
        from gradcomp.ncnet import open_dataset  # restores what NCnet files store compactly

        return open_dataset(run)
    except Exception as err:  # any reader error: one line
        kind = "a Zarr store" if zarr else "a netCDF file"
        raise CommandError(f"cannot read {run} as {kind} ({type(err).__name__}: {err})") from None


def has_provenance(ds) -> bool:  # ds: xr.Dataset
    """Whether ``ds`` carries gradcomp's provenance attributes (a sweep's output has none)."""
    return any(str(k).startswith("gradcomp") for k in ds.attrs)


def run(args: argparse.Namespace) -> int:
    from gradcomp.plot.report import figure, panels

    path = Path(args.run)
    if args.dpi < 10:
        raise CommandError(f"--dpi must be at least 10, got {args.dpi}", status=2)
    if not path.exists():
        raise CommandError(f"RUN {path} does not exist", status=2)
    png, pdf = outputs(path, args.out, args.force)
    ds = open_run(path)
    with ds:
        names = panels(ds)
        if not names and not has_provenance(ds):
            raise CommandError(
                f"{path} is not a gradcomp Dataset (no gradcomp provenance attributes and none of "
                "its variables: loss, gram, unit_gram, S or outcomes a, b with its dimensions)"
            )
        if not names:
            raise CommandError(
                f"{path}: nothing to plot (no loss(step, task), gram(step, layer, task, task_j), "
                "unit_gram, S(step) or outcomes a, b(seed, alice, bob, step))"
            )
        try:
            fig = figure(ds.load(), title=args.title)
        except ValueError as err:
            raise CommandError(f"{path}: {err}") from None
    save(lambda p: fig.savefig(p, dpi=args.dpi, format="png"), png, what="the figure",
         name="report")  # fmt: skip
    save(lambda p: fig.savefig(p, format="pdf"), pdf, what="the figure", name="report")
    print(f"panels: {', '.join(names)}", file=sys.stderr)
    print(f"wrote {png} and {pdf}", file=sys.stderr)
    return 0
