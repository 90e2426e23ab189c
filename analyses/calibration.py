"""Calibration of gradcomp's inference by simulation: false-positive rates and coverage.

The null and alternative models are those of the calibration tests (``tests/_simulate.py``,
built like the real data: seed random effects, autocorrelation, ties, exact zeros), so this
table and the tests check the same thing; the tests assert bands, this script records the
numbers the docs quote.

* ``chsh``: :func:`gradcomp.chsh.estimate` at the 95 % level, replications as an extra dim of
  one call. ``fpr``: share of p-values <= 0.05 of the S test (S = 2 at a regular point), of the
  CbD-margin test (margin = 0 at a regular point, with one or three shifts exactly 0, with two
  placements tied for s_odd) and of the signaling test (no signaling, with and without seeds
  whose runs differ), at n = 20, 50, 200 seeds. ``coverage``: share of S, Δ and margin
  intervals that hold the population value, on degenerate ensembles (95 % of n = 10 seeds
  solved alike), Δ = 0.2 with three shifts exactly 0 (n = 20, 200) and a margin > 0 model
  (n = 50).
* ``chsh_before``: the same S and Δ numbers for the code before the calibration work
  (``gradcomp/chsh.py`` at commit ``ac55dd1``, percentile bootstrap with 1000 resamples, read with
  ``git show``); it had no margin interval or test and no signaling test. Left out (with a note)
  where git or the commit is not at hand.
* ``correlate``: :func:`gradcomp.analyze.correlate` with ``serial="step"`` (first differences),
  ``seed`` design (16 seeds × 60 steps, seeds bootstrapped and permuted) and ``series`` design
  (one series of 200 steps, Bartlett's effective size); nulls: independent AR(1) 0.5, 0.9 and
  random walks with seed random effects (share of intervals excluding 0, of p < 0.05); non-nulls:
  innovations correlated ρ (coverage of ρ, power).
* ``lagged``: :func:`gradcomp.analyze.lagged` (64 seeds × 100 steps, max lag 5) with no lead
  (shared trend, lag-0 correlation ρ = 0 or 0.5): share of lead-asymmetry intervals excluding 0,
  of p < 0.05, coverage of 0; a planted two-step lead: coverage of the asymmetry (truth from
  20 000 seeds) and power.
* ``sensing``: :func:`gradcomp.analyze.sensing` on synthetic loss traces with no dependence on
  the remote setting (16 seeds, 50 steps, windows of 5): share of per-window p < 0.05 and of
  curves with a (false) onset; coverage of head A's accuracy interval with a remote-setting shift
  of 0.3 (partial decoding) and 3 (perfect, degenerate), truth the mean accuracy over replications.

The Monte Carlo standard error of a rate near 0.05 is sqrt(0.05 · 0.95 / reps) (stored as
``mc_se_005``; 0.011 at 400 replications, 0.007 at 1000).

Usage::

    python analyses/calibration.py --quick   # seconds (a test runs it)
    python analyses/calibration.py           # 400 replications (1000 for chsh), a few minutes

Writes ``analyses/summaries/calibration.json`` (``--summary`` to change).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import xarray as xr

from gradcomp import summary as gsummary
from gradcomp.analyze import lagged
from gradcomp.chsh import estimate
from gradcomp.dims import SEED, STEP, TASK

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import _simulate as sim  # noqa: E402  (the tests' models, shared)

ALPHA = 0.05
BEFORE = "ac55dd1"

#: key -> (population, the p-value tested)
CHSH_NULLS: dict[str, tuple[Callable[[], np.ndarray], str]] = {
    "S_regular": (sim.s_null, "p_value"),
    "margin_regular": (sim.margin_null, "cbd_p_value"),
    "margin_shift0": (lambda: sim.margin_null((0,)), "cbd_p_value"),
    "margin_three_shifts0": (lambda: sim.margin_null((0, 2, 3)), "cbd_p_value"),
    "margin_tie": (sim.margin_tie, "cbd_p_value"),
    "signaling_no_flips": (sim.lhv_null, "signaling_p_value"),
    "signaling_flips": (sim.flip_null, "signaling_p_value"),
}
#: key -> (population, numbers of seeds)
CHSH_NON_NULLS: dict[str, tuple[Callable[[], np.ndarray], tuple[int, ...]]] = {
    "degenerate_width1": (lambda: sim.degenerate(sim.WIDTH1), (10,)),
    "degenerate_S4": (lambda: sim.degenerate(sim.SIG4), (10,)),
    "delta02": (sim.lhv_delta, (20, 200)),
    "delta02_flips": (sim.flip_delta, (20, 200)),
    "margin_positive": (lambda: 0.6 * sim.margin_null() + 0.4 * sim.PR, (50,)),
}
NS = (20, 50, 200)


def _draw(p: np.ndarray, n: int, reps: int, seed: int) -> tuple[xr.DataArray, xr.DataArray]:
    return sim.sample(p, n, reps, np.random.default_rng(seed))


def chsh_table(reps: int, est: Callable[..., xr.Dataset] = estimate, **kw: Any) -> dict:
    """FPR of the three tests and coverage of the three intervals (same draws as the tests)."""
    fpr: dict[str, dict[str, float]] = {}
    for key, (make, var) in CHSH_NULLS.items():
        p = make()
        fpr[key] = {}
        for n in NS:
            out = est(*_draw(p, n, reps, n), confidence=1 - ALPHA, **kw)
            fpr[key][f"n{n}"] = float((out[var] <= ALPHA).mean())
    coverage: dict[str, dict[str, dict[str, float]]] = {}
    for key, (make, ns) in CHSH_NON_NULLS.items():
        p = make()
        coverage[key] = {
            f"n{n}": sim.covers(
                est(*_draw(p, n, reps, 100 + n), confidence=1 - ALPHA, **kw), sim.truth(p)
            )
            for n in ns
        }
    return {"fpr": fpr, "coverage": coverage}


def _old_chsh() -> ModuleType | str:
    """``gradcomp/chsh.py`` of commit ``BEFORE`` as a module, or why it is not at hand."""
    try:
        src = subprocess.run(
            ["git", "show", f"{BEFORE}:gradcomp/chsh.py"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError) as err:
        return f"git show {BEFORE}:gradcomp/chsh.py failed: {err}"
    # the dimension names' module was private then (gradcomp._dims); it is gradcomp.dims now
    src = src.replace("from gradcomp import _dims", "from gradcomp import dims as _dims")
    src = src.replace("gradcomp._dims", "gradcomp.dims")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "chsh_before.py"
        path.write_text(src)
        spec = importlib.util.spec_from_file_location("chsh_before", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


def chsh_before(reps: int) -> dict:
    """S test FPR and S / Δ coverage of the old code (it had no margin interval or test)."""
    old = _old_chsh()
    if isinstance(old, str):
        return {"note": old}
    fpr = {}
    p = sim.s_null()
    for n in NS:
        out = old.estimate(*_draw(p, n, reps, n), confidence=1 - ALPHA, n_boot=1000)
        fpr[f"n{n}"] = float((out["p_value"] <= ALPHA).mean())
    coverage: dict[str, dict[str, dict[str, float]]] = {}
    for key, (make, ns) in CHSH_NON_NULLS.items():
        p = make()
        t = sim.truth(p)
        coverage[key] = {}
        for n in ns:
            out = old.estimate(*_draw(p, n, reps, 100 + n), confidence=1 - ALPHA, n_boot=1000)
            cov = sim.covers(out.assign(cbd_margin_lo=np.nan, cbd_margin_hi=np.nan), t)
            coverage[key][f"n{n}"] = {"S": cov["S"], "delta": cov["delta"]}
    return {
        "source": f"{BEFORE}:gradcomp/chsh.py",
        "n_boot": 1000,
        "fpr": {"S_regular": fpr},
        "coverage": coverage,
    }


def _rates(lo: list, hi: list, p: list, truth: float = 0.0) -> dict[str, float]:
    lo_, hi_, p_ = (np.asarray(v, float) for v in (lo, hi, p))
    return {
        "excludes_0": float(np.mean(~((lo_ <= 0) & (0 <= hi_)))),
        "p_below_005": float(np.mean(p_ < ALPHA)),
        "coverage": float(np.mean((lo_ <= truth) & (truth <= hi_))),
    }


CORR_NULLS = {"ar1_05": 0.5, "ar1_09": 0.9, "random_walk": 1.0}
CORR_ALTS = {"random_walk_rho05": (1.0, 0.5), "ar1_05_rho04": (0.5, 0.4)}


def correlate_rates(design: str, reps: int, n_boot: int, phi: float, rho: float = 0.0) -> dict:
    """The rates of ``tests/test_analyze_correlate.py::null_rates``: the same draws and calls."""
    lo, hi, p = sim.correlate_intervals(design, reps, n_boot, phi, rho)
    return _rates(list(lo), list(hi), list(p), rho)


def correlate_table(reps: int, n_boot: int) -> dict:
    table: dict[str, dict[str, dict[str, float]]] = {}
    for design in ("seed", "series"):
        table[design] = {}
        for key, phi in CORR_NULLS.items():
            r = correlate_rates(design, reps, n_boot, phi)
            table[design][key] = {k: r[k] for k in ("excludes_0", "p_below_005")}
        for key, (phi, rho) in CORR_ALTS.items():
            r = correlate_rates(design, reps, n_boot, phi, rho)
            table[design][key] = {"coverage": r["coverage"], "power": r["p_below_005"]}
    return table


def _lagged_rates(x: np.ndarray, y: np.ndarray, n_boot: int, truth: float = 0.0) -> dict:
    lo, hi, p = [], [], []
    for i in range(x.shape[0]):
        a, b = (xr.DataArray(v[i], dims=(SEED, STEP)) for v in (x, y))
        out = lagged(a, b, max_lag=5, n_boot=n_boot, random_state=i)
        lo.append(float(out["lead_asymmetry_lo"]))
        hi.append(float(out["lead_asymmetry_hi"]))
        p.append(float(out["lead_asymmetry_p"]))
    return _rates(lo, hi, p, truth)


def lagged_table(reps: int, n_boot: int, truth_seeds: int) -> dict:
    """As ``tests/test_analyze_lagged.py``: no lead (ρ = 0, 0.5) and a planted lead."""
    table: dict[str, Any] = {}
    for key, rho in (("no_lead_rho0", 0.0), ("no_lead_rho05", 0.5)):
        table[key] = _lagged_rates(
            *sim.no_lead(np.random.default_rng(1), reps, 64, 100, rho), n_boot
        )
    g = np.random.default_rng(2)
    big_x, big_y = sim.lead(g, 1, truth_seeds, 100)
    big = (xr.DataArray(v[0], dims=(SEED, STEP)) for v in (big_x, big_y))
    truth = float(lagged(*big, max_lag=5, n_boot=9)["lead_asymmetry"])
    r = _lagged_rates(*sim.lead(g, reps, 64, 100), n_boot, truth)
    table["lead"] = {"truth": truth, "coverage": r["coverage"], "power": r["p_below_005"]}
    return table


def sensing_table(reps: int, n_perm: int) -> dict:
    null = sim.sensing_runs(reps, 16, 50, 5, 0.0, n_perm)
    table: dict[str, Any] = {
        "null": {
            "p_below_005": float((null["p_value"] < ALPHA).mean()),
            "false_onset": float(null["onset"].notnull().mean()),
            "windows": int(null.sizes[STEP]),
        },
        "coverage": {},
    }
    for key, shift in (("shift03", 0.3), ("shift3", 3.0)):
        out = sim.sensing_runs(reps, 16, 20, 10, shift, n_perm).sel({TASK: "A"})
        truth = out["accuracy"].mean("rep")
        cover = (out["accuracy_lo"] <= truth) & (truth <= out["accuracy_hi"])
        table["coverage"][key] = {
            "coverage": float(cover.mean()),
            "mean_accuracy": float(truth.mean()),
        }
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--summary", default="analyses/summaries/calibration.json")
    parser.add_argument("--reps", type=int, default=400, help="replications of the analyzers")
    parser.add_argument("--chsh-reps", type=int, default=1000, help="replications of chsh")
    parser.add_argument("--n-boot", type=int, default=399, help="resamples and permutations")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 10 reps (50 for chsh), 99 resamples"
    )
    parser.add_argument("--no-before", action="store_true", help="skip the old chsh code")
    args = parser.parse_args(argv)
    if args.quick:
        args.reps, args.chsh_reps, args.n_boot = 10, 50, 99
    start, load_start = time.perf_counter(), gsummary.load_average()
    timings: dict[str, float] = {}

    def timed(name: str, f: Callable[..., Any], *a: Any) -> Any:
        t0 = time.perf_counter()
        out = f(*a)
        timings[f"{name}_s"] = time.perf_counter() - t0
        print(f"{name}: {timings[f'{name}_s']:.1f} s", flush=True)
        return out

    values: dict[str, Any] = {
        "alpha": ALPHA,
        "reps": args.reps,
        "chsh_reps": args.chsh_reps,
        "n_boot": args.n_boot,
        "mc_se_005": math.sqrt(ALPHA * (1 - ALPHA) / args.reps),
        "chsh_mc_se_005": math.sqrt(ALPHA * (1 - ALPHA) / args.chsh_reps),
        "chsh": timed("chsh", chsh_table, args.chsh_reps),
    }
    if args.no_before:
        values["chsh_before"] = {"note": "skipped (--no-before)"}
    else:
        values["chsh_before"] = timed("chsh_before", chsh_before, args.chsh_reps)
    values["correlate"] = timed("correlate", correlate_table, args.reps, args.n_boot)
    truth_seeds = 2000 if args.quick else 20_000
    values["lagged"] = timed("lagged", lagged_table, args.reps, args.n_boot, truth_seeds)
    sens_perm = min(args.n_boot, 199)
    values["sensing"] = timed("sensing", sensing_table, args.reps, sens_perm)
    values["sensing"]["n_permutations"] = sens_perm
    timings["wall_s"] = time.perf_counter() - start
    gsummary.write(
        args.summary,
        values,
        run_id=gsummary.new_run_id(),
        argv=["analyses/calibration.py", *(sys.argv[1:] if argv is None else argv)],
        timings=timings,
        load_start=load_start,
    )
    print(f"wrote {args.summary} in {timings['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
