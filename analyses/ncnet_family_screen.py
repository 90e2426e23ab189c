"""Screen of NCnet task families: S across width, Δ and the CbD margin of every family.

The default task family (Alice {x1, x1 ^ x2}, Bob {x1, x1 ^ x3}) was chosen from a screen of
seven small families whose list was not kept. This script makes the screen reproducible and
public on a principled set that contains the default:

* **Families.** k = 3 inputs; each head's setting 1 is a single input x_i and its setting 2 a
  two-input XOR or AND (x_j ^ x_l, x_j & x_l); every such (Alice, Bob) pair, counted once up to
  relabelling the inputs and swapping the heads (both leave S unchanged): 34 families.
* **Seeds.** Screen seeds start at 10,000 (``--first-seed``); the headline capacity table uses
  seeds 0–1999. NCnet seeds run k from ``SeedSequence([k, width])``, so distinct k are
  independent streams: the screen shares no run with the measurement.
* **Selection rule** (rise–peak–return, fixed before the screen was run): a family qualifies
  when, at the last step, (rise) the upper bound of S is below 2 at the smallest width, (peak)
  the lower bound of S is above 2 at some width, and (return) |S − 2| ≤ 0.05 at the largest
  width; among qualifying families the one with the largest peak lower bound is selected.

For each family and width: S with its interval, Δ, the CbD margin (with its interval when
:func:`gradcomp.chsh.estimate` provides one), and degenerate/trivial flags when present.

    python analyses/ncnet_family_screen.py              # 34 families, widths 1-8, 500 seeds each
    python analyses/ncnet_family_screen.py --tiny --out /tmp/screen.nc

Writes ``results/ncnet_family_screen.nc`` and ``analyses/summaries/ncnet_family_screen.json``;
``figures/ncnet_family_screen.py`` draws the small multiples.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from gradcomp import chsh, ncnet, summary
from gradcomp.dims import STEP, WIDTH

NAME = "ncnet_family_screen"
SUMMARY = summary.ROOT / "analyses" / "summaries" / f"{NAME}.json"
FAMILY = "family"
OPS = {1: "^", 2: "&"}
RETURN_TOL = 0.05

Task = tuple[int, tuple[int, ...]]  # (0: input, 1: XOR, 2: AND; inputs)
Family = tuple[tuple[str, str], tuple[str, str]]


def _expr(task: Task) -> str:
    kind, inputs = task
    if kind == 0:
        return f"x{inputs[0]}"
    return f" {OPS[kind]} ".join(f"x{i}" for i in inputs)


def families(k: int = 3) -> list[Family]:
    """Every (Alice, Bob) family of the screen, one per class under input relabelling and head swap.

    Each head: setting 1 a single input, setting 2 an XOR or AND of two distinct inputs. The
    representative of a class is its smallest encoding; the default family is its own
    representative. Sorted by that encoding.
    """
    singles: list[Task] = [(0, (i,)) for i in range(1, k + 1)]
    gates: list[Task] = [
        (op, pair) for op in OPS for pair in itertools.combinations(range(1, k + 1), 2)
    ]

    def relabel(t: Task, p: tuple[int, ...]) -> Task:
        return (t[0], tuple(sorted(p[i - 1] for i in t[1])))

    classes = set()
    for a1, a2, b1, b2 in itertools.product(singles, gates, singles, gates):
        images = []
        for p in itertools.permutations(range(1, k + 1)):
            alice, bob = (relabel(a1, p), relabel(a2, p)), (relabel(b1, p), relabel(b2, p))
            images += [alice + bob, bob + alice]
        classes.add(min(images))
    return [((_expr(c[0]), _expr(c[1])), (_expr(c[2]), _expr(c[3]))) for c in sorted(classes)]


def label(family: Family) -> str:
    (a1, a2), (b1, b2) = family
    return f"A{{{a1}, {a2}}} B{{{b1}, {b2}}}"


DEFAULT_LABEL = label((tuple(ncnet.DEFAULT_ALICE), tuple(ncnet.DEFAULT_BOB)))  # type: ignore[arg-type]


def screen(
    fams: Sequence[Family],
    widths: Sequence[int],
    seeds: Sequence[int],
    *,
    steps: int = 2000,
    n_boot: int = 2000,
    engine: str = "auto",
) -> xr.Dataset:
    """Train every family over ``widths`` on ``seeds``; the CHSH estimate at the last step.

    Returns:
        :func:`gradcomp.chsh.estimate`'s variables with a ``family`` dimension (coordinate: the
        family's label), plus ``diverged_share`` when the trainer reports divergence.
    """
    rows = []
    for fam in fams:
        cfg = ncnet.NCnetConfig(alice=fam[0], bob=fam[1], steps=steps, trace_every=(steps,))
        ds = ncnet.run(cfg, widths, seeds, progress=False, engine=engine)
        final = ds.isel({STEP: -1})
        a, b = final["a"], final["b"]
        keep = None
        if "diverged" in final:  # a diverged run is not an outcome (issue 15)
            keep = final["diverged"]
        est = chsh.estimate(a, b, n_boot=n_boot)
        if keep is not None and "diverged_share" not in est:
            dims = [d for d in keep.dims if d not in (WIDTH,)]
            est["diverged_share"] = keep.astype(float).mean(dims)
        est = est.drop_vars([v for v in (STEP,) if v in est.coords])
        rows.append(est.expand_dims({FAMILY: [label(fam)]}))
    out = xr.concat(rows, dim=FAMILY, combine_attrs="override")
    out.attrs.update(
        seeds=f"{min(seeds)}..{max(seeds)}",
        n_seeds=len(seeds),
        steps=steps,
        family_rule="k = 3; each head: setting 1 one input, setting 2 an XOR or AND of two "
        "inputs; one family per class under input relabelling and head swap",
        selection_rule=SELECTION_RULE,
    )
    return out


SELECTION_RULE = (
    "rise: S_hi < 2 at the smallest width; peak: S_lo > 2 at some width; return: |S - 2| <= "
    f"{RETURN_TOL} at the largest width; select the qualifying family with the largest peak S_lo"
)


def select(est: xr.Dataset) -> xr.Dataset:
    """The rise–peak–return criteria per family, its score and rank, and the selected family."""
    first, last = est.isel({WIDTH: 0}, drop=True), est.isel({WIDTH: -1}, drop=True)
    rise = first["S_hi"] < 2
    peak_lo = est["S_lo"].max(WIDTH)
    peak = peak_lo > 2
    ret = np.abs(last["S"] - 2) <= RETURN_TOL
    ok = rise & peak & ret
    score = peak_lo.where(ok)
    order = np.argsort(-np.nan_to_num(score.values, nan=-np.inf), kind="stable")
    rank = np.empty(len(order), dtype=int)
    rank[order] = np.arange(1, len(order) + 1)
    rank = np.where(ok.values, rank, 0)
    peak_width = est[WIDTH].values[est["S"].fillna(-np.inf).argmax(WIDTH).values]
    out = xr.Dataset(
        {
            "rise": rise,
            "peak": peak,
            "return": ret,
            "qualifies": ok,
            "peak_S_lo": peak_lo,
            "rank": (FAMILY, rank),
            "peak_width": (FAMILY, peak_width),
        }
    )
    out.attrs["selected"] = str(est[FAMILY].values[order[0]]) if bool(ok.any()) else ""
    return out


def _margin_bounds(est: xr.Dataset) -> tuple[xr.DataArray, xr.DataArray]:
    if "cbd_margin_lo" in est:
        return est["cbd_margin_lo"], est["cbd_margin_hi"]
    nan = xr.full_like(est["cbd_margin"], np.nan)
    return nan, nan


def _flag(est: xr.Dataset, name: str) -> xr.DataArray:
    if name in est:
        return est[name].astype(bool)
    return xr.zeros_like(est["S"], dtype=bool)


def values(est: xr.Dataset, sel: xr.Dataset) -> dict:
    """The summary's numbers: per family and width S [lo, hi], Δ, margin [lo, hi], flags."""
    m_lo, m_hi = _margin_bounds(est)
    fams = {}
    for f in est[FAMILY].values:
        r, s = est.sel({FAMILY: f}), sel.sel({FAMILY: f})
        fams[str(f)] = {
            "S": r["S"].values,
            "S_lo": r["S_lo"].values,
            "S_hi": r["S_hi"].values,
            "delta": r["delta"].values,
            "cbd_margin": r["cbd_margin"].values,
            "cbd_margin_lo": m_lo.sel({FAMILY: f}).values,
            "cbd_margin_hi": m_hi.sel({FAMILY: f}).values,
            "S_degenerate": _flag(r, "S_degenerate").values,
            "S_trivial": _flag(r, "S_trivial").values,
            "peak_width": int(s["peak_width"]),
            "peak_S_lo": float(s["peak_S_lo"]),
            "qualifies": bool(s["qualifies"]),
            "rank": int(s["rank"]),
        }
    default_rank = fams.get(DEFAULT_LABEL, {}).get("rank", 0)
    return {
        "widths": est[WIDTH].values,
        "n_seeds": int(est.attrs["n_seeds"]),
        "seeds": est.attrs["seeds"],
        "steps": int(est.attrs["steps"]),
        "n_families": len(fams),
        "n_qualifying": int(sel["qualifies"].sum()),
        "selected": sel.attrs["selected"],
        "default": DEFAULT_LABEL,
        "default_rank": default_rank,
        "margin_interval": "cbd_margin_lo" in est,
        "selection_rule": SELECTION_RULE,
        "families": fams,
    }


def markdown_table(vals: dict) -> str:
    """One row per family: the S curve over width, the peak with Δ and margin, the verdict.

    Built from the summary alone (a test rebuilds it and finds it in docs/ncnet.md).
    """
    widths = vals["widths"]
    head = (
        "| family | S at width "
        + ", ".join(str(w) for w in widths)
        + " | peak n | S [95% CI] at peak | Δ | CbD margin [CI] | rise/peak/return | rank |"
    )
    lines = [head, "|" + "---|" * 8]

    def f(x: float | None, fmt: str = "+.2f") -> str:
        return "–" if x is None or x != x else format(x, fmt).replace("-", "−")

    def sort_key(item: tuple[str, dict]) -> tuple[int, str]:
        r = item[1]["rank"]
        return (r if r > 0 else 10**6, item[0])

    for name, r in sorted(vals["families"].items(), key=sort_key):
        k = list(widths).index(r["peak_width"])
        curve = " ".join(f(v) for v in r["S"])
        lo, hi = r["cbd_margin_lo"][k], r["cbd_margin_hi"][k]
        margin = f(r["cbd_margin"][k]) + (f" [{f(lo)}, {f(hi)}]" if lo is not None else "")
        flags = "/".join(
            "✓" if ok else "✗"
            for ok in (r["S_hi"][0] < 2, r["peak_S_lo"] > 2, abs(r["S"][-1] - 2) <= RETURN_TOL)
        )
        shown = f"**{name}**" if name in (vals["selected"], vals["default"]) else name
        lines.append(
            f"| {shown} | {curve} | {r['peak_width']} | {f(r['S'][k])} "
            f"[{f(r['S_lo'][k])}, {f(r['S_hi'][k])}] | {f(r['delta'][k], '.2f')} | {margin} | "
            f"{flags} | {r['rank'] or '–'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=500, help="screen seeds per family")
    p.add_argument("--first-seed", type=int, default=10_000)
    p.add_argument("--max-width", type=int, default=8)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--n-boot", type=int, default=2000)
    p.add_argument("--engine", default="auto", choices=("auto", "c", "torch"))
    p.add_argument("--out", type=Path, default=Path("results/ncnet_family_screen.nc"))
    p.add_argument("--summary", type=Path, default=None, help=f"default {SUMMARY}")
    p.add_argument("--tiny", action="store_true", help="4 families, widths 1-3, 16 seeds")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    load0, t0 = summary.load_average(), time.perf_counter()
    fams, widths = families(), list(range(1, args.max_width + 1))
    seeds, steps, n_boot = (
        range(args.first_seed, args.first_seed + args.seeds),
        args.steps,
        args.n_boot,
    )
    if args.tiny:
        fams, widths, seeds, steps, n_boot = fams[:4], [1, 2, 3], range(10_000, 10_016), 100, 200
    path = args.summary or (args.out.with_suffix(".json") if args.tiny else SUMMARY)
    est = screen(fams, widths, list(seeds), steps=steps, n_boot=n_boot, engine=args.engine)
    sel = select(est)
    vals = values(est, sel)
    run_id = summary.new_run_id()
    out = xr.merge([est, sel], combine_attrs="override")
    out.attrs.update(selected=sel.attrs["selected"], default_family=DEFAULT_LABEL)
    out.attrs.update(summary.dataset_attrs(path, run_id))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out.to_netcdf(args.out, engine="h5netcdf")
    wall = time.perf_counter() - t0
    summary.write(
        path,
        vals,
        run_id=run_id,
        argv=["analyses/ncnet_family_screen.py", *(argv if argv is not None else sys.argv[1:])],
        timings={"wall_s": wall},
        load_start=load0,
    )
    table = markdown_table(summary.read(path)["values"])  # from the rounded summary, as the docs
    args.out.with_suffix(".md").write_text(table + "\n")
    print(table)
    rank = vals["default_rank"] or "none (does not qualify)"
    print(f"selected: {vals['selected'] or 'none'}; default {DEFAULT_LABEL}: rank {rank}")
    print(f"wrote {args.out}, {args.out.with_suffix('.md')} and {path} ({wall:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
