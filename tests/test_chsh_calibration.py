"""Calibration of gradcomp.chsh.estimate by simulation: S, Δ and CbD-margin intervals and tests.

Each model (in ``tests/_simulate.py``, shared with ``analyses/calibration.py``) is a population
distribution over the 256 outcome configurations of one seed
(a11, a12, a21, a22, b11, b12, b21, b22), built like the real data: a seed draws a latent type (a
deterministic "solved" configuration, a PR-box half, or noisy runs with seed-level random effects)
and its eight outcomes follow. Truth (C, shifts, S, Δ, s_odd, margin) is computed exactly from the
population, independently of gradcomp. Boundary points are found by a linear solve, so S = 2 or
margin = 0 holds exactly; the kinks (a shift exactly 0, two placements tied for s_odd) are
built in. Replications are an extra dimension of one ``estimate`` call.

Fast versions run by default (100 replications, wide bands); ``--runslow`` runs 400+.
"""

from __future__ import annotations

import numpy as np
import pytest
from _simulate import (
    PR,
    SIG4,
    WIDTH1,
    covers,
    degenerate,
    flip_delta,
    flip_null,
    lhv_delta,
    lhv_null,
    margin_null,
    margin_tie,
    s_null,
    sample,
    truth,
)

from gradcomp.chsh import estimate

ALPHA = 0.05


def run(p, n, reps, seed=0):
    a, b = sample(p, n, reps, np.random.default_rng(seed))
    return estimate(a, b, confidence=1 - ALPHA)


def test_models_are_what_they_claim() -> None:
    t = truth(s_null())
    assert t["S"] == pytest.approx(2, abs=1e-12)
    for zero in ((), (0,), (0, 2, 3)):
        t = truth(margin_null(zero))
        assert t["margin"] == pytest.approx(0, abs=1e-12)
        assert t["odd"][0] - t["odd"][1] > 0.1  # a unique maximal placement
        shifts = np.abs(t["shifts"])
        assert (shifts[list(zero)] < 1e-12).all()
        assert (np.delete(shifts, list(zero)) > 0.02).all()
    t = truth(margin_tie())
    assert t["margin"] == pytest.approx(0, abs=1e-9)
    assert t["odd"][0] - t["odd"][1] == pytest.approx(0, abs=1e-9)
    assert t["odd"][1] - t["odd"][2] > 0.1
    np.testing.assert_allclose(t["shifts"], 0, atol=1e-12)
    t = truth(lhv_delta())
    np.testing.assert_allclose(t["shifts"], [0.2, 0, 0, 0], atol=1e-12)
    assert truth(lhv_null())["delta"] == pytest.approx(0, abs=1e-12)
    assert truth(flip_null())["delta"] == pytest.approx(0, abs=1e-12)
    np.testing.assert_allclose(truth(flip_delta())["shifts"], [0.2, 0, 0, 0], atol=1e-12)
    t = truth(degenerate(WIDTH1))
    assert t["S"] == pytest.approx(-1.9) and t["margin"] == pytest.approx(-0.1)


#: name -> (model, p-value, smallest n at which the rate must lie in [0.03, 0.07]; None: only
#: <= 0.07). The margin's regular point has shifts of 0.17-0.20, within ~1.5 standard errors of
#: the kink below n ~ 100, where the intersection-union test is conservative by design; at kinks
#: and for the exact (discrete) signaling tests only the upper bound applies.
NULLS = {
    "S=2 regular": (s_null, "p_value", 50),
    "margin=0 regular": (margin_null, "cbd_p_value", 200),
    "margin=0, shift A1 = 0": (lambda: margin_null((0,)), "cbd_p_value", None),
    "margin=0, three shifts 0": (lambda: margin_null((0, 2, 3)), "cbd_p_value", None),
    "margin=0, placements tied": (margin_tie, "cbd_p_value", None),
    "no signaling, no flips": (lhv_null, "signaling_p_value", None),
    "no signaling, flips": (flip_null, "signaling_p_value", None),
}
NON_NULLS = {
    "degenerate width-1, 95 %": (lambda: degenerate(WIDTH1), (10,)),
    "degenerate S=4 signaling, 95 %": (lambda: degenerate(SIG4), (10,)),
    "Δ = 0.2, three shifts 0": (lhv_delta, (20, 200)),
    "Δ = 0.2, three shifts 0, runs flip": (flip_delta, (20, 200)),
    "margin > 0": (lambda: 0.6 * margin_null() + 0.4 * PR, (50,)),
}


def _check_fpr(name: str, n: int, reps: int, lo: float, hi: float) -> float:
    make, var, band_from = NULLS[name]
    est = run(make(), n, reps, seed=n)
    fpr = float((est[var] <= ALPHA).mean())
    if band_from is not None and n >= band_from:
        assert lo <= fpr <= hi, (name, n, fpr)
    else:
        assert fpr <= hi, (name, n, fpr)
    return fpr


def _check_coverage(name: str, n: int, reps: int, floor: float) -> dict[str, float]:
    make, _ = NON_NULLS[name]
    p = make()
    cov = covers(run(p, n, reps, seed=100 + n), truth(p))
    assert min(cov.values()) >= floor, (name, n, cov)
    return cov


@pytest.mark.parametrize("name", list(NULLS))
def test_false_positive_rate_fast(name: str) -> None:
    _check_fpr(name, 200, 100, 0.005, 0.14)


@pytest.mark.parametrize(("name", "n"), [(k, n) for k, v in NON_NULLS.items() for n in v[1]])
def test_coverage_fast(name: str, n: int) -> None:
    _check_coverage(name, n, 100, 0.88)


def test_signaling_tests_have_power() -> None:
    est = run(lhv_delta(), 200, 100)
    assert float((est.signaling_p_value <= ALPHA).mean()) > 0.8
    assert float((est.shift_p_value.isel(marginal=0) <= ALPHA).mean()) > 0.8
    assert float((est.shift_p_value.isel(marginal=1) <= ALPHA).mean()) <= 0.1


@pytest.mark.slow
@pytest.mark.parametrize("n", [20, 50, 200])
@pytest.mark.parametrize("name", list(NULLS))
def test_false_positive_rate(name: str, n: int) -> None:
    _check_fpr(name, n, 1000, 0.03, 0.07)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "n"), [(k, n) for k, v in NON_NULLS.items() for n in v[1]])
def test_coverage(name: str, n: int) -> None:
    _check_coverage(name, n, 1000, 0.93)
