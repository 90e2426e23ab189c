"""The ``gradcomp`` command line: one sub-command per module in ``gradcomp.commands``.

Each command module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

#: command modules, in the order ``gradcomp --help`` lists them
COMMANDS = ("ncnet", "lora", "sweep")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradcomp",
        description="Gradient competition between tasks: ensembles, CHSH statistics, figures.",
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
    """Entry point of the ``gradcomp`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "_run"):
        parser.print_help()
        return 2
    return int(args._run(args) or 0)
