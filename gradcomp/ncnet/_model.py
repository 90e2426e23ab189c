"""NCnet written functionally: initialisation per (width, seed), losses, metrics, the Problem.

One run has parameters ``W1 (m, k)``, ``b1 (m,)`` (the shared hidden layer), ``V (2, m)``,
``c (2,)`` (the heads A and B), with ``m = n`` hidden units (shared) or ``m = 2n`` (unshared:
units ``0..n-1`` belong to head A, ``n..2n-1`` to head B, enforced by a fixed ``head_mask``).
Logits ``L = act(X W1ᵀ + b1) (V ⊙ M)ᵀ + c``; each head's loss is the binary cross-entropy
``Σ_p w_p (softplus(L_pt) − y_tp L_pt)`` with ``w_p = 1/P_train`` on training patterns and 0 on
held-out ones.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from gradcomp.ensemble import Problem, generator
from gradcomp.ncnet._config import NCnetConfig

__all__ = ["activate", "head_mask", "init_params", "problem", "run_data"]


def init_params(config: NCnetConfig, width: int, seed: int) -> dict[str, np.ndarray]:
    """Initial parameters of seed ``seed`` at hidden width ``width`` (float64 numpy arrays).

    Draws come from :func:`gradcomp.ensemble.generator` ``(seed, width)``: weights normal with
    std ``init_scale / sqrt(fan_in)``, biases zero. Unshared nets draw head A's n units, then head
    B's n units, then the head weights.
    """
    if not isinstance(width, (int, np.integer)) or width < 1:
        raise ValueError(f"widths must be positive integers, got {width!r}")
    k, s = config.inputs, config.init_scale
    rng = generator(seed, width)
    m = 2 * width if config.unshared else width
    z = rng.standard_normal(m * k + 2 * width)  # one call: the same stream as two, faster
    w1 = z[: m * k].reshape(m, k) * (s / np.sqrt(k))
    v = z[m * k :].reshape(2, width) * (s / np.sqrt(width))
    if config.unshared:
        full = np.zeros((2, 2 * width))
        full[0, :width], full[1, width:] = v[0], v[1]
        v = full
    return {"W1": w1, "b1": np.zeros(m), "V": v, "c": np.zeros(2)}


def head_mask(config: NCnetConfig, width: int) -> np.ndarray:
    """Which hidden units each head reads, shape ``(2, m)`` of 0/1."""
    if not config.unshared:
        return np.ones((2, width))
    mask = np.zeros((2, 2 * width))
    mask[0, :width] = 1
    mask[1, width:] = 1
    return mask


def activate(z: torch.Tensor, name: str) -> torch.Tensor:
    """The hidden activation."""
    if name == "tanh":
        return torch.tanh(z)
    if name == "relu":
        return torch.relu(z)
    if name == "sigmoid":
        return torch.sigmoid(z)
    raise ValueError(f"unknown activation {name!r}")


def run_data(config: NCnetConfig, alice: int, bob: int) -> dict[str, np.ndarray]:
    """Per-run data of setting pair (alice, bob): targets ``y (2, P)``, weights, masks."""
    t = config.targets()
    held = config.heldout_patterns()
    train = ~held
    return {
        "y": np.stack([t[0, alice - 1], t[1, bob - 1]]),
        "w": train / train.sum(),
        "train": train.astype(float),
        "held": held.astype(float),
    }


def _logits(params: Mapping[str, torch.Tensor], data: Mapping[str, torch.Tensor], act: str):
    h = activate(data["x"] @ params["W1"].T + params["b1"], act)
    return h @ (params["V"] * data["mask"]).T + params["c"]  # (P, 2)


def problem(config: NCnetConfig) -> Problem:
    """NCnet as a :class:`gradcomp.ensemble.Problem` (tasks A, B; shared layer ``hidden``)."""
    act = config.activation
    threshold = config.threshold

    def task_losses(params, data):
        logits = _logits(params, data, act).T  # (2, P)
        per = torch.nn.functional.softplus(logits) - data["y"] * logits
        return per @ data["w"]

    def metrics(params, data):
        logits = _logits(params, data, act).T
        correct = ((logits > 0).to(logits.dtype) == data["y"]).to(logits.dtype)
        acc = correct @ data["train"] / data["train"].sum()
        out = {
            "acc": acc,
            "outcome": torch.where(acc >= threshold - 1e-9, 1.0, -1.0).to(logits.dtype),
        }
        if config.heldout_patterns().any():
            out["heldout_acc"] = correct @ data["held"] / data["held"].sum()
        return out

    return Problem(task_losses=task_losses, metrics=metrics, layers={"hidden": ("W1", "b1")})
