"""Screen of LoRA task pairs: which tasks compete for rank when two heads share an adapter.

The measured LoRA experiment (``analyses/lora_rank.py``) needs task pairs whose settings need
more rank together than apart. This screen trains each candidate task set (A1, A2 | B1, B2) with
shared adapters and with the separate-adapter control, on calibration seeds only (from 100,000;
the measured seeds start at 0), at a low and a high rank, with the training setting of the
committed CPU run (``LoraExperiment.cpu``), and reports per setting pair (Alice's task, Bob's
task) and head the held-out accuracy together (shared) and apart (separate).

* **Deficit** of a pair at rank r: mean over its two heads of (accuracy apart − accuracy
  together), mean over the screen seeds, with its standard error over seeds.
* **Selection rule** (fixed before the screen was run): a task set qualifies when every one of
  its four tasks is learned apart (mean held-out accuracy apart ≥ its majority-class share +
  0.05 at the high rank); among qualifying sets the one with the largest mean deficit at the
  low rank minus the mean deficit at the high rank (competition that rank relieves) is chosen.

    python analyses/lora_screen.py              # the committed screen (minutes on a CPU)
    python analyses/lora_screen.py --tiny       # seconds (a test runs it)

Writes ``analyses/summaries/lora_screen.json`` (``--out DIR``: ``DIR/lora_screen.json``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from gradcomp import summary
from gradcomp.dims import ALICE, BOB, SEED, STEP

NAME = "lora_screen"
SUMMARY = summary.ROOT / "analyses" / "summaries" / f"{NAME}.json"
FIRST_SEED = 100_000
#: candidate task sets: (A1, A2, B1, B2); the first is the project's default
CANDIDATES: tuple[dict[str, str], ...] = (
    {"A1": "lang:en,de", "A2": "freq:4.3-4.9", "B1": "lang:en,fr", "B2": "length"},
    {"A1": "lang:en,de", "A2": "lang:en,es", "B1": "lang:en,fr", "B2": "length"},
    {"A1": "lang:en,de", "A2": "length", "B1": "lang:en,fr", "B2": "freq:4.3-4.9"},
)


def screen_set(tasks: dict[str, str], *, ranks: tuple[int, int], n_seeds: int, tiny: bool) -> dict:
    """Accuracies together/apart and the deficits of one task set."""
    from gradcomp.lora import LoraExperiment, run

    kw = dict(
        tasks=tasks,
        ranks=ranks,
        n_seeds=n_seeds,
        first_seed=FIRST_SEED,
        threshold=0.5,
        control_seeds=None,
    )
    cfg = LoraExperiment.tiny(**kw) if tiny else LoraExperiment.cpu(**kw)
    ds = run(cfg).isel({STEP: -1})
    words = cfg.words()
    majority = {
        t: float(max(y.float().mean(), 1 - y.float().mean())) for t, y in words.labels.items()
    }
    acc = ds["heldout_acc"]  # (adapters, rank, seed, alice, bob, task)
    pairs, learned = {}, {}
    for x in (1, 2):
        for y in (1, 2):
            cell = acc.sel({ALICE: x, BOB: y})
            apart = cell.sel(adapters="separate").mean("task")
            together = cell.sel(adapters="shared").mean("task")
            d = apart - together  # (rank, seed)
            pairs[f"A{x}-B{y}"] = {
                "alice_task": tasks[f"A{x}"],
                "bob_task": tasks[f"B{y}"],
                "together": together.mean(SEED).values,
                "apart": apart.mean(SEED).values,
                "deficit": d.mean(SEED).values,
                "deficit_se": (d.std(SEED, ddof=1) / np.sqrt(d.sizes[SEED])).values,
            }
    sep = acc.sel(adapters="separate")
    for head, own, col in (("A", ALICE, "A"), ("B", BOB, "B")):
        for s in (1, 2):
            t = f"{head}{s}"
            a = float(sep.sel({own: s, "task": col}).isel(rank=-1).mean())
            learned[t] = {
                "apart_high_rank": a,
                "majority": majority[t],
                "learned": a >= majority[t] + 0.05,
            }
    low = float(np.mean([p["deficit"][0] for p in pairs.values()]))
    high = float(np.mean([p["deficit"][-1] for p in pairs.values()]))
    return {
        "tasks": tasks,
        "pairs": pairs,
        "tasks_learned": learned,
        "qualifies": all(v["learned"] for v in learned.values()),
        "deficit_low": low,
        "deficit_high": high,
        "relief": low - high,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="seconds: 2 layers, 2 seeds, 8 steps")
    ap.add_argument("--seeds", type=int, default=6, help="screen seeds per task set")
    ap.add_argument("--ranks", type=int, nargs=2, default=[1, 16], help="low and high rank")
    ap.add_argument("--out", help="directory of the summary (default: the committed one)")
    args = ap.parse_args(argv)
    load0, t0 = summary.load_average(), time.perf_counter()
    n_seeds = 2 if args.tiny else args.seeds
    results = []
    for i, tasks in enumerate(CANDIDATES):
        res = screen_set(tasks, ranks=tuple(args.ranks), n_seeds=n_seeds, tiny=args.tiny)
        results.append(res)
        print(
            f"set {i}: {tasks}  qualifies={res['qualifies']}  deficit r={args.ranks[0]}: "
            f"{res['deficit_low']:+.3f}  r={args.ranks[1]}: {res['deficit_high']:+.3f}",
            flush=True,
        )
        for name, p in res["pairs"].items():
            print(
                f"   {name} {p['alice_task']:>13} | {p['bob_task']:<13} together "
                f"{np.round(p['together'], 3)} apart {np.round(p['apart'], 3)} deficit "
                f"{np.round(p['deficit'], 3)} ± {np.round(p['deficit_se'], 3)}"
            )
    ok = [i for i, r in enumerate(results) if r["qualifies"]]
    chosen = max(ok, key=lambda i: results[i]["relief"]) if ok else None
    print(f"selected set: {chosen}")
    path = Path(args.out) / f"{NAME}.json" if args.out else SUMMARY
    summary.write(
        path,
        {
            "ranks": list(args.ranks),
            "n_seeds": n_seeds,
            "first_seed": FIRST_SEED,
            "sets": results,
            "selected": chosen,
        },
        run_id=summary.new_run_id(),
        argv=["analyses/lora_screen.py", *(sys.argv[1:] if argv is None else argv)],
        timings={"wall_s": time.perf_counter() - t0},
        load_start=load0,
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
