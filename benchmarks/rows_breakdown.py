"""Where a recorded ``strategy="rows"`` step's time over a plain step goes, by ablation.

On the models of :mod:`record_overhead` (one CPU thread, thread CPU time), each variant below is
timed against a plain step on its own model copies, round-robin, ratio per round, median; every
variant switches on one more part of the recorder, so the differences between consecutive rows are
the parts' costs:

1. ``functions``: the shared Linear and LayerNorm modules run through the recorder's Python
   autograd functions, whose backward does the plain module's arithmetic only, and the step is a
   plain ``backward`` (no statistics);
2. ``+ step``: the recorder's step around it (losses, the choice, Gram bookkeeping, storage), no
   blocks;
3. ``+ LayerNorm blocks``: LayerNorm's per-task blocks and Grams;
4. ``+ Linear blocks``: Linear's per-task blocks and Grams (``rows`` with its Python functions,
   ``GRADCOMP_ROWS_NATIVE=0``);
5. ``C++ functions``: ``rows`` as shipped, the same work in the C++ functions of
   :mod:`gradcomp.recorder.rows.native`.

Variants 1-4 switch the C++ functions off and replace the Python functions' ``backward`` methods
for the duration of their phase (this is a measurement, not an API). Run:
``python benchmarks/rows_breakdown.py [--models d64] [--tasks 8] [--reps 30] [--copies 2]``;
writes ``benchmarks/summaries/rows_breakdown.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
import record_overhead as ro

from gradcomp import summary as gsummary
from gradcomp.recorder import core
from gradcomp.recorder.rows.modules.layernorm import FusedLayerNorm
from gradcomp.recorder.rows.modules.linear import FusedLinear

SUMMARY = Path(__file__).parent / "summaries" / "rows_breakdown.json"
VARIANTS = ("functions", "+ step", "+ LayerNorm blocks", "+ Linear blocks", "C++ functions")


def _linear_plain(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    x, weight = ctx.saved_tensors
    g2, x2 = g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1])
    gb = g2.sum(0) if ctx.has_bias else None
    return g.matmul(weight), g2.T @ x2, gb, None, None, None, None


def _layernorm_plain(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    x, weight, bias, mean, rstd = ctx.saved_tensors
    gx, gw, gb = torch.ops.aten.native_layer_norm_backward(
        g, x, ctx.shape, mean, rstd, weight, bias, [True, True, True]
    )
    return gx, gw, gb, None, None, None


def _plain_record(self: Any, step: int, ordered: list[torch.Tensor], weights: list[float],
                  *args: Any, **kw: Any) -> None:  # fmt: skip
    self._plain(ordered, weights)  # the recorder's own unrecorded step


@contextlib.contextmanager
def variant(level: int) -> Iterator[None]:
    """Switch on the first ``level + 1`` parts (see the module docstring)."""
    saved = [
        (FusedLinear, "backward", FusedLinear.__dict__["backward"]),
        (FusedLayerNorm, "backward", FusedLayerNorm.__dict__["backward"]),
        (core.Recorder, "_record", core.Recorder.__dict__["_record"]),
    ]
    env = os.environ.get("GRADCOMP_ROWS_NATIVE")
    try:
        if level < 4:
            os.environ["GRADCOMP_ROWS_NATIVE"] = "0"
        if level < 3:
            FusedLinear.backward = staticmethod(_linear_plain)  # type: ignore[method-assign]
        if level < 2:
            FusedLayerNorm.backward = staticmethod(_layernorm_plain)  # type: ignore[method-assign]
        if level < 1:
            core.Recorder._record = _plain_record  # type: ignore[method-assign]
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)
        if env is None:
            os.environ.pop("GRADCOMP_ROWS_NATIVE", None)
        else:
            os.environ["GRADCOMP_ROWS_NATIVE"] = env


def phase(model: str, n_tasks: int, level: int, reps: int, copies: int) -> float:
    """Median over rounds of (variant step / plain step), each the mean over its copies."""
    with contextlib.ExitStack() as stack:
        plain = [ro.make_plain(ro.build("cpu", model, n_tasks)) for _ in range(copies)]
        rec = [
            ro.make_recorded(ro.build("cpu", model, n_tasks), "rows", 1, stack)
            for _ in range(copies)
        ]
        for fn in rec:  # the first step checks rows= and finds the shared parameters
            fn()
        stack.enter_context(variant(level))
        methods = {"plain": plain, "rows": rec}
        ratios = []
        for r in range(reps + 2):
            times = ro.time_round(methods, ["plain", "rows"] if r % 2 else ["rows", "plain"])
            if r >= 2:
                ratios.append(times["rows"] / times["plain"])
    return statistics.median(ratios)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["d64"], choices=list(ro.MODELS))
    ap.add_argument("--tasks", type=int, nargs="+", default=[8])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--copies", type=int, default=2)
    ap.add_argument("--summary", type=Path, default=SUMMARY)
    args = ap.parse_args()
    torch.set_num_threads(1)
    start, load_start = time.perf_counter(), gsummary.load_average()
    results: dict[str, Any] = {}
    print("| model | T | " + " | ".join(VARIANTS) + " |")
    print("|---|---|" + "---|" * len(VARIANTS))
    for model in args.models:
        for t in args.tasks:
            row = [phase(model, t, k, args.reps, args.copies) for k in range(len(VARIANTS))]
            results[f"{model}/{t}"] = dict(zip(VARIANTS, (round(v, 3) for v in row), strict=True))
            print(f"| {model} | {t} | " + " | ".join(f"{v:.2f}×" for v in row) + " |", flush=True)
    summary = {
        "ratio": "median over rounds of (variant step / plain step), each the mean over copies",
        "reps": args.reps,
        "copies": args.copies,
        "results": results,
    }
    timings = {"wall_s": time.perf_counter() - start}
    gsummary.write(
        args.summary, summary, run_id=gsummary.new_run_id(), timings=timings, load_start=load_start
    )
    print(f"\nsummary: {args.summary}")


if __name__ == "__main__":
    main()
