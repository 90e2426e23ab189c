"""The NCnet experiment's settings: :class:`NCnetConfig` (a frozen dataclass)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gradcomp.ncnet._expr import input_patterns, truth_table
from gradcomp.schedule import as_schedule, scheduled

__all__ = ["ACTIVATIONS", "DEFAULT_ALICE", "DEFAULT_BOB", "NCnetConfig"]

ACTIVATIONS = ("tanh", "relu", "sigmoid")

#: The default task family (the project's choice, see docs/ncnet.md): setting 1 of both heads is
#: the easy task x1; setting 2 is an XOR of x1 with a different second input (x2 for Alice, x3 for
#: Bob). The two XORs need different hidden features, so near the critical width (n = 3) only the
#: pair (2, 2) lacks hidden units, and S rises above 2 there.
DEFAULT_ALICE = ("x1", "x1 ^ x2")
DEFAULT_BOB = ("x1", "x1 ^ x3")


@dataclass(frozen=True)
class NCnetConfig:
    """One NCnet experiment: k binary inputs → shared hidden layer → heads A (Alice), B (Bob).

    Attributes:
        inputs: number k of binary inputs; the data set is all 2**k patterns, encoded ±1.
        alice: Alice's two tasks (setting 1, setting 2), Boolean expressions over x1..xk.
        bob: Bob's two tasks.
        activation: hidden activation, one of ``ACTIVATIONS``.
        lr: learning rate of full-batch gradient descent.
        steps: number of updates.
        init_scale: weights are normal with std ``init_scale / sqrt(fan_in)``; biases start at 0.
        unshared: give each head its own n hidden units (the control without sharing).
        holdout: held-out patterns, never trained on: an int m (m patterns picked by a fixed
            permutation from ``numpy.random.default_rng(0)``) or a tuple of pattern indices.
        trace_every: which steps are traced (losses, accuracies, outcomes, Gram): ``None`` for
            about 30 log-spaced steps, an int for every that many steps, a tuple of steps, or a
            schedule (a ``step -> bool`` callable, e.g. :func:`gradcomp.schedule.logarithmic`).
            The last step is always traced; step 0 too for ``None`` and ints.
        units: also trace the per-unit Gram ``unit_gram``.
        threshold: a head's outcome is +1 when its training accuracy is at least this (1.0: every
            training pattern correct), else −1.
        dtype: ``"float32"`` or ``"float64"``.
    """

    inputs: int = 3
    alice: tuple[str, str] = DEFAULT_ALICE
    bob: tuple[str, str] = DEFAULT_BOB
    activation: str = "tanh"
    lr: float = 0.5
    steps: int = 2000
    init_scale: float = 1.0
    unshared: bool = False
    holdout: int | tuple[int, ...] = ()
    trace_every: int | tuple[int, ...] | Callable[[int], bool] | None = None
    units: bool = False
    threshold: float = 1.0
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if not isinstance(self.inputs, int) or not 1 <= self.inputs <= 12:
            raise ValueError(f"inputs must be an integer in 1..12, got {self.inputs!r}")
        for who in ("alice", "bob"):
            tasks = tuple(getattr(self, who))
            if len(tasks) != 2:
                raise ValueError(f"{who} needs exactly two tasks (settings 1 and 2), got {tasks}")
            object.__setattr__(self, who, tasks)
            for t in tasks:
                truth_table(t, self.inputs)  # raises a ValueError naming the problem
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if not self.lr > 0 or not self.init_scale > 0:
            raise ValueError(
                f"lr and init_scale must be positive, got {self.lr}, {self.init_scale}"
            )
        if not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"steps must be a non-negative integer, got {self.steps!r}")
        if not 0 < self.threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if not isinstance(self.holdout, int):
            object.__setattr__(self, "holdout", tuple(int(i) for i in self.holdout))
        held = self.heldout_patterns()
        if held.sum() >= 2**self.inputs:
            raise ValueError("holdout leaves no training pattern: hold out fewer patterns")
        if isinstance(self.trace_every, (list, tuple)):
            object.__setattr__(self, "trace_every", tuple(int(s) for s in self.trace_every))
        self.trace_steps()  # validates

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def patterns(self) -> np.ndarray:
        """Input patterns encoded ±1, shape ``(2**k, k)``."""
        return np.where(input_patterns(self.inputs), 1.0, -1.0)

    def targets(self) -> np.ndarray:
        """Targets in {0, 1}, shape ``(head=2, setting=2, pattern)`` (head 0 = Alice)."""
        return np.array(
            [[truth_table(t, self.inputs) for t in tasks] for tasks in (self.alice, self.bob)],
            dtype=float,
        )

    def heldout_patterns(self) -> np.ndarray:
        """Boolean mask of held-out patterns, shape ``(2**k,)``."""
        n = 2**self.inputs
        mask = np.zeros(n, dtype=bool)
        if isinstance(self.holdout, int):
            if not 0 <= self.holdout < n:
                raise ValueError(f"holdout must be in 0..{n - 1} patterns, got {self.holdout}")
            mask[np.random.default_rng(0).permutation(n)[: self.holdout]] = True
        else:
            bad = [i for i in self.holdout if not 0 <= i < n]
            if bad:
                raise ValueError(f"held-out pattern indices {bad} are outside 0..{n - 1}")
            mask[list(self.holdout)] = True
        return mask

    def trace_steps(self) -> list[int]:
        """The traced steps, sorted, always including the last step."""
        return scheduled(
            as_schedule(self.trace_every, last=self.steps, name="trace_every"), self.steps
        )

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-friendly dict (for provenance)."""
        out = dataclasses.asdict(self)
        if callable(self.trace_every):
            out["trace_every"] = getattr(self.trace_every, "__name__", repr(self.trace_every))
        return out
