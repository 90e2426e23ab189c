"""The ``gradcomp`` command line: one sub-command per module in ``gradcomp.commands``.

Each command module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.
Bad input, an unusable device or path and a failed write end as one line on stderr
(``gradcomp COMMAND: error: ...``) and a non-zero exit status, never a traceback:
``run`` raises :class:`gradcomp.commands._common.CommandError` for them, and a ``ValueError``
that still escapes a command (gradcomp's exception for bad input) is reported the same way.

Streams follow the usual convention: results (tables) go to stdout, everything else (progress
bars, "wrote ...", "done in ...", help when no command is given) to stderr, so that
``gradcomp ncnet ... > table.txt`` keeps only the table. ``gradcomp --version`` prints the version
of the installed distribution.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from gradcomp.commands._common import CommandError, one_line
from gradcomp.provenance import command, package_version

__all__ = ["COMMANDS", "Parser", "build_parser", "main"]

#: command modules, in the order ``gradcomp --help`` lists them
COMMANDS = ("ncnet", "lora", "sweep", "report")


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line (``PROG: error: ...``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="gradcomp",
        description="Gradient competition between tasks: ensembles, CHSH statistics, figures.",
    )
    parser.add_argument(
        "--version", action="version", version=f"gradcomp {package_version('gradcomp')}"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"gradcomp.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"gradcomp.commands.{name}":
                raise
            continue
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gradcomp`` command; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as err:  # --help (0) or a usage error (2), already printed
        return err.code if isinstance(err.code, int) else 2
    if not hasattr(args, "_run"):  # no sub-command: a usage error, so help goes to stderr
        parser.print_help(sys.stderr)
        return 2
    prog = f"gradcomp {args.command}"
    token = command.set(" ".join(["gradcomp", *(argv if argv is not None else sys.argv[1:])]))
    try:
        return int(args._run(args) or 0)
    except CommandError as err:
        print(f"{prog}: error: {err.message}", file=sys.stderr)
        return err.status
    except ValueError as err:  # bad input found only after the command's own checks
        print(f"{prog}: error: {one_line(err) or type(err).__name__}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    finally:
        command.reset(token)
