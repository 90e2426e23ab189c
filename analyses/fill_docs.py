"""Rewrite every marked number in README.md and docs/ from the committed run summaries.

A number quoted in the docs is written with a marker naming its source, invisible when the
Markdown is rendered::

    S = 3.47<!--analyses/ncnet_mechanism:at_critical_last_step.S|.2f-->

(summary ``analyses/summaries/ncnet_mechanism.json``, key path, optional format spec). Run this
after re-running an analysis; ``tests/test_docs_numbers.py`` fails while any marked number differs
from its summary.

    python analyses/fill_docs.py            # rewrite in place, list the files changed
    python analyses/fill_docs.py --check    # exit 1 if any file would change
"""

from __future__ import annotations

import argparse
import sys

from gradcomp import summary

DOCS = [
    "README.md",
    *sorted(p.relative_to(summary.ROOT).as_posix() for p in (summary.ROOT / "docs").glob("*.md")),
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="only report files that would change")
    args = p.parse_args(argv)
    stale = []
    for doc in DOCS:
        path = summary.ROOT / doc
        text = path.read_text()
        new = summary.fill(text)
        if new != text:
            stale.append(doc)
            if not args.check:
                path.write_text(new)
    for doc in stale:
        print(("stale: " if args.check else "rewrote: ") + doc)
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
