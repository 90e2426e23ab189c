"""Null and alternative models built like the real data, for the calibration tests and for
``analyses/calibration.py`` (which puts this folder on ``sys.path``).

Traces are vectorised over replications: ``(reps, seeds, steps)`` arrays. CHSH populations are
distributions over the 256 outcome configurations of one seed; :func:`sample` draws replications
as an extra dimension of one ``gradcomp.chsh.estimate`` call.
"""

from __future__ import annotations

import itertools

import numpy as np
import xarray as xr
from scipy import signal


def ar1(g: np.random.Generator, shape: tuple[int, ...], phi: float, innov=None) -> np.ndarray:
    """Stationary AR(1) along the last axis (phi = 1: a random walk started at 0)."""
    e = g.normal(size=shape) if innov is None else innov
    if phi < 1:
        e[..., 0] /= np.sqrt(1 - phi * phi)
    return signal.lfilter([1.0], [1.0, -phi], e, axis=-1)


def pair(
    g: np.random.Generator,
    reps: int,
    seeds: int,
    steps: int,
    phi: float,
    rho: float = 0.0,
    seed_sd: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """x, y traces ``(reps, seeds, steps)``: seed random effects plus AR(1) (phi = 1: random
    walks) whose innovations have correlation ``rho``; their first differences then correlate
    exactly ``rho`` (same filter), so rho is the true value of the default correlate."""
    ex = g.normal(size=(reps, seeds, steps))
    ey = rho * ex + np.sqrt(1 - rho * rho) * g.normal(size=(reps, seeds, steps))
    x = ar1(g, ex.shape, phi, ex) + seed_sd * g.normal(size=(reps, seeds, 1))
    y = ar1(g, ey.shape, phi, ey) + seed_sd * g.normal(size=(reps, seeds, 1))
    return x, y


def correlate_intervals(
    design: str, reps: int, n_boot: int, phi: float, rho: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``correlate``'s Pearson interval and p-value on ``reps`` simulated trace pairs.

    ``design="seed"``: 16 seeds × 60 steps (seeds permuted / bootstrapped); ``"series"``: one
    series of 200 steps (Bartlett's effective size). Traces from :func:`pair` (AR(1) ``phi``,
    innovation correlation ``rho``), generator seed 11, ``random_state`` = the replication.

    Returns:
        ``(lo, hi, p)``, one entry per replication.
    """
    from gradcomp.analyze import correlate
    from gradcomp.dims import SEED, STEP

    g = np.random.default_rng(11)
    seeds, steps = (16, 60) if design == "seed" else (1, 200)
    x, y = pair(g, reps, seeds, steps, phi, rho)
    out = np.empty((3, reps))
    for i in range(reps):
        if design == "seed":
            a, b = (xr.DataArray(v[i], dims=(SEED, STEP)) for v in (x, y))
            kw = {"n_boot": n_boot, "n_permutations": n_boot}
            res = correlate(a, b, (SEED, STEP), serial=STEP, random_state=i, **kw)
        else:
            a, b = (xr.DataArray(v[i, 0], dims=STEP) for v in (x, y))
            res = correlate(a, b, STEP, serial=STEP, random_state=i)
        out[:, i] = [float(res[k]) for k in ("pearson_lo", "pearson_hi", "pearson_p")]
    return out[0], out[1], out[2]


def sensing_traces(
    g: np.random.Generator,
    reps: int,
    seeds: int,
    steps: int,
    shift: float = 0.0,
    phi: float = 0.7,
) -> np.ndarray:
    """Loss traces ``(reps, seed, alice, bob, step, task)`` of heads A and B.

    A decaying trend, a seed random effect per head, each head's own-setting effect and AR(1)
    noise independent per run (seed, alice, bob) -- no common random numbers, so nothing is
    exact by construction. With ``shift = 0`` no head's trace depends on the remote setting
    (the null of no sensing); otherwise head A's loss is raised by ``shift`` at bob = 2.
    """
    shape = (reps, seeds, 2, 2, steps, 2)
    t = np.arange(steps)
    loss = 2.0 * np.exp(-t / steps)[:, None] + 0.3 * g.normal(size=(reps, seeds, 1, 1, 1, 2))
    loss = loss + 0.1 * ar1(g, (reps, seeds, 2, 2, 2, steps), phi).swapaxes(-1, -2)
    loss = np.broadcast_to(loss, shape).copy()
    loss[:, :, 1, :, :, 0] += 0.2  # A's own setting
    loss[:, :, :, 1, :, 1] += 0.2  # B's own setting
    loss[:, :, :, 1, :, 0] += shift
    return loss


def sensing_runs(
    reps: int, seeds: int, steps: int, window: int, shift: float = 0.0, n_perm: int = 199
) -> xr.Dataset:
    """``sensing`` on ``reps`` sets of :func:`sensing_traces` (generator seed 3), dim ``rep``.

    Seed effects and AR(1) noise, no common random numbers; ``shift = 0`` is the null (no trace
    depends on the remote setting). ``random_state`` = the replication.
    """
    from gradcomp.analyze import sensing
    from gradcomp.dims import ALICE, BOB, SEED, STEP, TASK

    traces = sensing_traces(np.random.default_rng(3), reps, seeds, steps, shift)
    coords = {SEED: np.arange(seeds), ALICE: [1, 2], BOB: [1, 2], STEP: np.arange(steps)}
    outs = []
    for i in range(reps):
        ds = xr.Dataset(
            {"loss": ((SEED, ALICE, BOB, STEP, TASK), traces[i])},
            coords={**coords, TASK: ["A", "B"]},
        )
        kw = {"n_permutations": n_perm, "n_boot": n_perm, "random_state": i}
        outs.append(sensing(ds, window=window, **kw))
    return xr.concat(outs, dim="rep")


def no_lead(g: np.random.Generator, reps: int, seeds: int, steps: int, rho: float = 0.0):
    """Per seed: AR(1) 0.5 noise (innovations correlated rho, at lag 0 only), a seed random
    effect and one shared deterministic trend in both x and y: no lead, true asymmetry 0."""
    ex = g.normal(size=(reps, seeds, steps))
    ey = rho * ex + np.sqrt(1 - rho * rho) * g.normal(size=ex.shape)
    trend = 3 * np.exp(-np.arange(steps) / 30)
    x = ar1(g, ex.shape, 0.5, ex) + trend + g.normal(size=(reps, seeds, 1))
    y = ar1(g, ey.shape, 0.5, ey) + trend + g.normal(size=(reps, seeds, 1))
    return x, y


def lead(g: np.random.Generator, reps: int, seeds: int, steps: int):
    """y follows x two steps later (plus its own noise): x leads y."""
    x = ar1(g, (reps, seeds, steps + 2), 0.5)
    y = 0.5 * x[..., :-2] + ar1(g, (reps, seeds, steps), 0.5)
    return x[..., 2:], y


# --- CHSH populations (see tests/test_chsh_calibration.py) -------------------------------------
BITS = np.array(list(itertools.product((-1.0, 1.0), repeat=8)))  # (256, 8)
A_ = BITS[:, :4].reshape(-1, 2, 2)  # a[c, alice, bob]
B_ = BITS[:, 4:].reshape(-1, 2, 2)


def config(a, b) -> int:
    """Index of the configuration with outcomes a[i][j], b[i][j] (alice i, bob j)."""
    key = np.concatenate([np.ravel(a), np.ravel(b)]).astype(float)
    return int(np.flatnonzero((BITS == key).all(1))[0])


def point(a, b) -> np.ndarray:
    p = np.zeros(256)
    p[config(a, b)] = 1.0
    return p


def independent(pa, pb) -> np.ndarray:
    """Independent runs: P(a_ij = +1) = pa[i][j], P(b_ij = +1) = pb[i][j]."""
    q = np.concatenate([np.ravel(pa), np.ravel(pb)])
    return np.prod(np.where(BITS > 0, q, 1 - q), axis=1)


def latent(types: list[np.ndarray], weights) -> np.ndarray:
    w = np.asarray(weights, float)
    return sum(wi * t for wi, t in zip(w / w.sum(), types, strict=True))


def truth(p: np.ndarray) -> dict[str, float | np.ndarray]:
    """Population values, by direct definition (no gradcomp code)."""
    C = np.array([[p @ (A_[:, i, j] * B_[:, i, j]) for j in range(2)] for i in range(2)])
    ma = np.array([[p @ A_[:, i, j] for j in range(2)] for i in range(2)])
    mb = np.array([[p @ B_[:, i, j] for j in range(2)] for i in range(2)])
    shifts = np.array(
        [ma[0, 0] - ma[0, 1], ma[1, 0] - ma[1, 1], mb[0, 0] - mb[1, 0], mb[0, 1] - mb[1, 1]]
    )
    c = C.ravel()
    odd = [
        sum(s * v for s, v in zip(signs, c, strict=True))
        for signs in itertools.product((1, -1), repeat=4)
        if np.prod(signs) < 0
    ]
    delta = np.abs(shifts).sum()
    return {
        "C": C,
        "S": c[0] + c[1] + c[2] - c[3],
        "shifts": shifts,
        "delta": delta,
        "odd": np.sort(odd)[::-1],
        "s_odd": max(odd),
        "margin": max(odd) - 2 - delta,
    }


def sample(p: np.ndarray, n: int, reps: int, rng: np.random.Generator) -> tuple:
    idx = rng.choice(256, size=(n, reps), p=p / p.sum())
    dims = ("seed", "alice", "bob", "rep")
    a = np.moveaxis(A_[idx], 1, -1)  # (n, 2, 2, reps)
    b = np.moveaxis(B_[idx], 1, -1)
    return xr.DataArray(a, dims=dims), xr.DataArray(b, dims=dims)


# --- the configurations the models mix --------------------------------------------------------
ONES = [[1, 1], [1, 1]]
#: per-seed S = 4 through Bob's B2 flipping with Alice's setting (shift B2 = +2)
SIG4 = point(ONES, [[1, 1], [1, -1]])
#: the other half of a PR box: C = (1, 1, 1, −1) with shift B2 = −2, so the halves cancel Δ
SIG4_NEG = point(-np.ones((2, 2)), [[-1, -1], [-1, 1]])
PR = 0.5 * (SIG4 + SIG4_NEG)  # margin 2, Δ = 0
#: PR box for placement "minus at C12": C = (1, −1, 1, 1)
PR12 = 0.5 * (point(ONES, [[1, -1], [1, 1]]) + point(-np.ones((2, 2)), [[-1, 1], [-1, -1]]))
#: the width-1 solution: local deterministic a = (1, −1), b = (1, −1), C = (1, −1, −1, 1)
WIDTH1 = point([[1, 1], [-1, -1]], [[1, -1], [1, -1]])
UNIFORM = np.full(256, 1 / 256)


def noise(shift_zero: tuple[int, ...] = ()) -> np.ndarray:
    """Noisy runs with seed random effects (two latent types) and signaling on every shift
    except those listed in ``shift_zero`` (0: A1, 1: A2, 2: B1, 3: B2), which are exactly 0."""
    pa1 = np.array([[0.8, 0.55], [0.3, 0.55]])  # shifts A1 +0.5, A2 −0.5
    pb1 = np.array([[0.75, 0.3], [0.5, 0.6]])  # shifts B1 +0.5, B2 −0.6
    pa2, pb2 = pa1 - 0.2, pb1 + 0.15  # a second latent type, same shifts
    for t in shift_zero:
        for pa, pb in ((pa1, pb1), (pa2, pb2)):
            if t < 2:
                pa[t, 1] = pa[t, 0]
            else:
                pb[1, t - 2] = pb[0, t - 2]
    return latent([independent(pa1, pb1), independent(pa2, pb2)], [0.6, 0.4])


def _solve_one(base: np.ndarray, extra: np.ndarray, f) -> np.ndarray:
    """Mixture (1 − w) base + w extra with f(P) = 0, for f linear along the segment."""
    f0, f1 = f(base), f(extra)
    w = f0 / (f0 - f1)
    assert 0 < w < 1
    return (1 - w) * base + w * extra


def margin_linear(p_ref: np.ndarray):
    """The margin as a linear functional, with the placement and σ of the reference population."""
    t = truth(p_ref)
    sigma = np.sign(t["shifts"])
    signs = next(
        s
        for s in itertools.product((1, -1), repeat=4)
        if np.prod(s) < 0 and np.isclose(np.dot(s, t["C"].ravel()), t["s_odd"])
    )

    def f(p):
        tp = truth(p)
        return float(np.dot(signs, tp["C"].ravel()) - 2 - sigma @ tp["shifts"])

    return f


def s_null() -> np.ndarray:
    """S = 2 exactly: noisy signaling runs mixed with solved S = 4 seeds."""
    return _solve_one(noise(), SIG4, lambda p: truth(p)["S"] - 2)


def margin_null(shift_zero: tuple[int, ...] = ()) -> np.ndarray:
    """margin = 0 exactly: noisy signaling runs mixed with PR-box seeds (a regular point)."""
    base = noise(shift_zero)
    probe = 0.5 * base + 0.5 * PR
    return _solve_one(base, PR, margin_linear(probe))


def margin_tie() -> np.ndarray:
    """margin = 0 with placements "minus at C22" and "minus at C12" tied for s_odd.

    A tie at margin 0 forces Δ = 0 and the two shared terms to ±1 (L_a + L_b = 2 (C_i ± C_j) ≤ 4
    while L_a = 2 + Δ): C11 = C21 = 1, C12 = C22 = 0. Seeds are either random runs with
    a_i1 b_i1 = 1, or one of two solved configurations whose B2 shifts cancel.
    """
    keep = (A_[:, 0, 0] * B_[:, 0, 0] > 0) & (A_[:, 1, 0] * B_[:, 1, 0] > 0)
    random_runs = keep / keep.sum()
    solved = 0.5 * (SIG4 + point(ONES, [[1, -1], [1, 1]]))
    return latent([random_runs, solved], [0.5, 0.5])


def lhv_delta() -> np.ndarray:
    """No correlation structure beyond fair coins; A1 shifts by 0.2, three shifts exactly 0."""
    out = np.zeros(256)
    for c in range(256):
        a, b = A_[c], B_[c]
        # a11, a21, b11, b12 fair; a22 = a21, b21 = b11, b22 = b12 (no signaling there);
        # a12 = a11 except +1 -> -1 with probability 0.2
        if a[1, 1] != a[1, 0] or b[1, 0] != b[0, 0] or b[1, 1] != b[0, 1]:
            continue
        base = 1 / 16
        if a[0, 0] < 0:
            out[c] = base * (a[0, 1] < 0)
        else:
            out[c] = base * (0.8 if a[0, 1] > 0 else 0.2)
    return out


def degenerate(c0: np.ndarray) -> np.ndarray:
    """95 % of seeds agree on the solved configuration c0, the rest are random."""
    return 0.95 * c0 + 0.05 * UNIFORM


def lhv_null() -> np.ndarray:
    """No signaling: each seed draws (a1, a2, b1, b2) once, with a latent seed effect."""
    out = np.zeros(256)
    for c in range(256):
        a, b = A_[c], B_[c]
        if (a[:, 0] != a[:, 1]).any() or (b[0] != b[1]).any():
            continue
        lam = np.array([a[0, 0], a[1, 0], b[0, 0], b[0, 1]])
        for q, w in (([0.7, 0.4, 0.6, 0.5], 0.5), ([0.2, 0.5, 0.3, 0.8], 0.5)):
            out[c] += w * np.prod(np.where(lam > 0, q, 1 - np.array(q)))
    return out


def flip_null() -> np.ndarray:
    """No signaling, but a seed's runs differ: independent runs whose marginals do not depend on
    the remote setting (two latent types), so the exact tests see many discordant seeds."""
    pa1, pb1 = np.array([[0.7, 0.7], [0.4, 0.4]]), np.array([[0.6, 0.3], [0.6, 0.3]])
    pa2, pb2 = np.array([[0.3, 0.3], [0.5, 0.5]]), np.array([[0.2, 0.8], [0.2, 0.8]])
    return latent([independent(pa1, pb1), independent(pa2, pb2)], [0.5, 0.5])


def flip_delta() -> np.ndarray:
    """Independent runs (many discordant seeds); only A1 shifts, by 0.2 (three shifts exactly 0):
    the case where the bootstrap of Σ|d̂_t| is biased up and under-covers."""
    pa1, pb1 = np.array([[0.7, 0.6], [0.4, 0.4]]), np.array([[0.6, 0.3], [0.6, 0.3]])
    pa2, pb2 = np.array([[0.3, 0.2], [0.5, 0.5]]), np.array([[0.2, 0.8], [0.2, 0.8]])
    return latent([independent(pa1, pb1), independent(pa2, pb2)], [0.5, 0.5])


def covers(est, t) -> dict[str, float]:
    def rate(lo, hi, v):
        return float(((est[lo] <= v + 1e-12) & (est[hi] >= v - 1e-12)).mean())

    return {
        "S": rate("S_lo", "S_hi", t["S"]),
        "delta": rate("delta_lo", "delta_hi", t["delta"]),
        "margin": rate("cbd_margin_lo", "cbd_margin_hi", t["margin"]),
    }
