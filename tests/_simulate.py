"""Null and alternative trace models built like the real data, for calibration tests.

Everything is vectorised over replications: ``(reps, seeds, steps)`` arrays.
"""

from __future__ import annotations

import numpy as np
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
