"""Committed summaries of analysis runs, and figures stamped with the summary they were drawn from.

Every script in ``analyses/`` and ``benchmarks/`` writes, besides its (ignored) dataset under
``results/``, a small JSON summary that is committed: ``analyses/summaries/<script>.json`` with
the numbers quoted in README.md and docs/ (floats rounded), the command line, the machine and its
1-minute load average (timings mean nothing without them), and a ``run_id`` that the dataset
carries too. ``tests/test_docs_numbers.py`` checks every quoted number against these files.

A figure script draws from the dataset and stamps the figure with the sha256 of the summary of the
same run (:func:`savefig`); the test recomputes the hash of the committed summary, so a figure
that was not redrawn after a re-run fails.

    run_id = summary.new_run_id()
    ds.attrs.update(summary.dataset_attrs(path, run_id))
    summary.write(path, {"S": {...}}, run_id=run_id, timings={"wall_s": wall})
    ...
    summary.savefig(fig, "figures/x.png", summary.source_of(ds))
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "ROOT",
    "dataset_attrs",
    "fill",
    "load_average",
    "lookup",
    "machine",
    "new_run_id",
    "read",
    "read_stamp",
    "savefig",
    "sha256",
    "source_of",
    "write",
]

#: the checkout's root (summary paths are stored relative to it when they lie inside)
ROOT = Path(__file__).resolve().parents[1]

#: a JSON list of numbers, booleans, nulls or plain strings (written on one line)
_SCALAR_LIST = re.compile(r'\[(?:\s*(?:-?[\d.eE+-]+|true|false|null|"[^"\[\]{}]*"),?)+\s*\]')

#: PNG text keys of the stamp
KEY_PATH, KEY_SHA = "gradcomp_summary", "gradcomp_summary_sha256"


def _relative(path: Path) -> str:
    path = Path(path).resolve()
    try:
        return path.relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def _resolve(path: str | Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else ROOT / p


def _round(value: Any, digits: int) -> Any:
    """Round floats to ``digits`` significant digits, recursively; NaN/inf become None."""
    if isinstance(value, Mapping):
        return {str(k): _round(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_round(v, digits) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return _round(value.tolist(), digits)
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    x = float(value)
    if not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")


def machine() -> dict[str, Any]:
    """CPU model, logical cores, OS and Python: where a timing was taken."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "os": platform.platform(terse=True),
        "python": platform.python_version(),
    }


def load_average() -> float | None:
    """The 1-minute load average (``None`` where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def new_run_id() -> str:
    """A fresh identifier that ties a dataset to the summary of the same run."""
    return uuid.uuid4().hex


def dataset_attrs(path: str | Path, run_id: str) -> dict[str, str]:
    """Attributes for the run's dataset: where its summary lies and the run it belongs to."""
    return {"summary_path": _relative(Path(path)), "summary_run_id": run_id}


def write(
    path: str | Path,
    values: Mapping[str, Any],
    *,
    run_id: str,
    argv: Sequence[str] | None = None,
    timings: Mapping[str, float] | None = None,
    load_start: float | None = None,
    digits: int = 4,
) -> str:
    """Write a summary JSON (sorted keys, floats to ``digits`` significant digits).

    Args:
        path: the file, e.g. ``analyses/summaries/ncnet_capacity.json``.
        values: the numbers the docs quote (nested mappings, lists, numbers, strings).
        run_id: from :func:`new_run_id`; the dataset carries the same id.
        argv: the command line (default ``sys.argv``).
        timings: wall-clock seconds; stored with the machine and the load averages.
        load_start: the 1-minute load average when the run started (the end is taken now).
        digits: significant digits of floats.

    Returns:
        The sha256 of the written file.
    """
    argv = list(sys.argv if argv is None else argv)
    if argv and argv[0].endswith(".py"):
        argv[0] = _relative(Path(argv[0]))
    doc: dict[str, Any] = {
        "command": " ".join(["python", *argv]) if argv else "",
        "run_id": run_id,
        "values": _round(values, digits),
    }
    if timings is not None:
        doc["timings"] = {k: round(float(v), 1) for k, v in timings.items()}
        doc["machine"] = machine()
        doc["load_1min_start"] = load_start
        doc["load_1min_end"] = load_average()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False, allow_nan=False)
    text = _SCALAR_LIST.sub(lambda m: re.sub(r"\s+", " ", m.group(0)), text) + "\n"
    path.write_text(text, encoding="utf-8")
    return sha256(path)


def read(path: str | Path) -> dict[str, Any]:
    """The summary as a dict (a relative path is taken from the checkout's root)."""
    return json.loads(_resolve(path).read_text(encoding="utf-8"))


def sha256(path: str | Path) -> str:
    """sha256 of a file's bytes."""
    return hashlib.sha256(_resolve(path).read_bytes()).hexdigest()


def source_of(attrs: Mapping[str, Any] | Any, summary: str | Path | None = None) -> Path:
    """The summary a dataset was made with, checked to belong to the same run.

    Args:
        attrs: the dataset (or its attrs) with ``summary_path`` and ``summary_run_id``.
        summary: use this summary file instead of the one the dataset names.

    Raises:
        ValueError: the dataset names no summary, or the summary is from another run (the
            analysis was re-run and this dataset is older, or the other way round).
    """
    attrs = getattr(attrs, "attrs", attrs)
    if summary is None:
        if "summary_path" not in attrs:
            raise ValueError("the dataset names no summary: re-run its analysis script")
        summary = attrs["summary_path"]
    path = _resolve(summary)
    if not path.exists():
        raise ValueError(f"summary {summary} not found: re-run the analysis script")
    got = read(path).get("run_id")
    want = attrs.get("summary_run_id")
    if got != want:
        raise ValueError(
            f"summary {summary} is from run {got}, the dataset from run {want}: "
            "re-run the analysis so that both come from one run"
        )
    return path


def savefig(fig: Any, path: str | Path, summary: str | Path, **kwargs: Any) -> None:
    """``fig.savefig`` with the summary's path and sha256 stamped into the file's metadata.

    PNG: text chunks ``gradcomp_summary`` and ``gradcomp_summary_sha256``; PDF: the ``Keywords``
    entry. Other formats are saved without a stamp.
    """
    path = Path(path)
    rel, digest = _relative(_resolve(summary)), sha256(summary)
    suffix = path.suffix.lower()
    if suffix == ".png":
        kwargs["metadata"] = {KEY_PATH: rel, KEY_SHA: digest, **kwargs.get("metadata", {})}
    elif suffix == ".pdf":
        kwargs["metadata"] = {"Keywords": f"{KEY_PATH}={rel} {KEY_SHA}={digest}"}
    fig.savefig(path, **kwargs)


def read_stamp(png: str | Path) -> dict[str, str]:
    """The ``{gradcomp_summary, gradcomp_summary_sha256}`` stamp of a PNG ({} if none)."""
    from PIL import Image

    with Image.open(png) as im:
        text = dict(getattr(im, "text", {}) or {})
    return {k: text[k] for k in (KEY_PATH, KEY_SHA) if k in text}


#: a quoted number (or numbers joined by "/") and the marker naming where it comes from,
#: ``3.47<!--analyses/x:a.b|.2f-->``: summary ``analyses/summaries/x.json``, key path ``a.b``,
#: optional format spec after ``|``
_NUM = r"(?:[+\-−]?(?:\d[\d,]*(?:\.\d+)?(?:e[+\-]?\d+)?%?|NaN)|yes|no)"
MARKER = re.compile(
    rf"(?P<num>(?:{_NUM}(?:/{_NUM})*)?)"
    r"<!--(?P<src>[\w/.-]+):(?P<key>[^|>]+?)(?:\|(?P<fmt>[^>]*?))?-->"
)


def lookup(tree: Mapping[str, Any] | list[Any], path: str) -> Any:
    """The value at a dotted key path; a key may itself contain dots (``lr=0.1,n=3.S``).

    At each level the longest key that is a prefix of the remaining path (followed by ``.`` or
    its end) is taken; in a list, the key is an index (``S.2``: the third entry).
    """
    if isinstance(tree, list):
        head, _, rest = path.partition(".")
        return lookup(tree[int(head)], rest) if rest else tree[int(head)]
    for key in sorted(tree, key=len, reverse=True):
        if path == key:
            return tree[key]
        if path.startswith(key + ".") and isinstance(tree[key], (Mapping, list)):
            return lookup(tree[key], path[len(key) + 1 :])
    raise KeyError(path)


def _summary_file(src: str) -> Path:
    folder, _, stem = src.rpartition("/")
    return _resolve(f"{folder}/summaries/{stem}.json")


def _format(value: Any, fmt: str | None) -> str:
    if isinstance(value, list):  # e.g. the own settings at which something holds: "1/2"
        return "/".join(_format(v, fmt) for v in value)
    if value is None:
        return "NaN"
    if isinstance(value, bool):  # a flag, e.g. S_trivial
        return "yes" if value else "no"
    if not isinstance(value, (int, float)):
        raise TypeError(f"a quoted number must be numeric, got {value!r}")
    text = format(value, fmt) if fmt else (str(value) if isinstance(value, int) else f"{value:g}")
    return text.replace("-", "−") if text.startswith("-") else text


def fill(text: str) -> str:
    """``text`` with every marked number rewritten from its summary (see :data:`MARKER`).

    A document is true to its data exactly when ``fill(text) == text``; ``analyses/fill_docs.py``
    rewrites README.md and docs/ after a re-run.
    """
    cache: dict[str, dict[str, Any]] = {}

    def one(m: re.Match[str]) -> str:
        src = m["src"]
        if src not in cache:
            cache[src] = read(_summary_file(src))
        value = lookup(cache[src], m["key"])
        return f"{_format(value, m['fmt'])}<!--{src}:{m['key']}" + (
            f"|{m['fmt']}-->" if m["fmt"] is not None else "-->"
        )

    return MARKER.sub(one, text)
