"""S against LoRA rank on real multilingual words: train the ensembles, write the Datasets.

Usage::

    python analyses/lora_rank.py --tiny            # seconds on a CPU (a test runs it)
    python analyses/lora_rank.py --small           # the small CPU setting, a few minutes
    python analyses/lora_rank.py --device cuda     # the full setting (ranks 1-16, 50 seeds)

Writes ``results/lora_rank.nc`` and ``results/lora_rank_summary.nc`` (``--out`` to change);
``figures/lora_rank.py`` draws the figure from them. Same options as ``gradcomp lora``.
"""

from __future__ import annotations

import argparse
import sys

from gradcomp.commands import lora


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=lora.HELP)
    lora.add_arguments(parser)
    return lora.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
