"""What every NCnet engine needs, computed once: :class:`NCnetPlan`.

A plan holds the data of an ensemble (patterns, targets of the four setting pairs, pattern weights
and masks, head masks, initial parameters per width and seed, traced steps) as read-only float64
numpy arrays. The engines (:mod:`gradcomp.ncnet._fast` for ``"torch"`` and ``"c"``,
:mod:`gradcomp.ncnet._autograd` for ``"vmap"`` and ``"loop"``) only lay them out for their own
computation; none of them builds data of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from gradcomp.ncnet._config import NCnetConfig
from gradcomp.ncnet._model import head_mask, init_params, run_data

__all__ = ["PARAMS", "SETTING_PAIRS", "NCnetPlan", "plan"]

#: the four setting pairs (alice, bob), in the order of every engine's run axis
SETTING_PAIRS = ((1, 1), (1, 2), (2, 1), (2, 2))
#: parameter names of one run (see :mod:`gradcomp.ncnet._model`)
PARAMS = ("W1", "b1", "V", "c")


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class NCnetPlan:
    """An NCnet ensemble's inputs: the runs of every width × setting pair × seed.

    Attributes:
        config: the experiment.
        widths: hidden widths n.
        seeds: seed values (one run per setting pair each).
        units: hidden units m per width (``n``, or ``2n`` unshared).
        patterns: ``(P, k)`` input patterns, ±1.
        targets: ``(4, 2, P)`` targets of setting pair s (:data:`SETTING_PAIRS`) for head t.
        weights: ``(P,)`` pattern weights ``w_p`` (``1/P_train`` on training patterns, else 0).
        train, held: ``(P,)`` 1.0 on training / held-out patterns.
        head_masks: per width, ``(2, m)`` 0/1: which hidden units each head reads.
        inits: per width, the initial parameters of every seed, seed axis first: ``W1 (K, m, k)``,
            ``b1 (K, m)``, ``V (K, 2, m)``, ``c (K, 2)``.
        trace_steps: the traced steps (sorted).
    """

    config: NCnetConfig
    widths: tuple[int, ...]
    seeds: tuple[int, ...]
    units: tuple[int, ...]
    patterns: np.ndarray
    targets: np.ndarray
    weights: np.ndarray
    train: np.ndarray
    held: np.ndarray
    head_masks: tuple[np.ndarray, ...]
    inits: tuple[dict[str, np.ndarray], ...]
    trace_steps: tuple[int, ...]

    def select(self, index: slice) -> NCnetPlan:
        """The plan of the seeds ``seeds[index]`` (a chunk): the seed-free arrays are shared."""
        inits = tuple({k: _frozen(a[index]) for k, a in per.items()} for per in self.inits)
        return replace(self, seeds=self.seeds[index], inits=inits)


def plan(config: NCnetConfig, widths: Sequence[int], seeds: Sequence[int]) -> NCnetPlan:
    """The :class:`NCnetPlan` of ``widths`` × ``seeds`` (validated by the caller)."""
    widths, seeds = tuple(int(w) for w in widths), tuple(int(s) for s in seeds)
    data = [run_data(config, a, b) for a, b in SETTING_PAIRS]
    inits = []
    for n in widths:
        per = [init_params(config, n, s) for s in seeds]
        inits.append({name: _frozen(np.stack([p[name] for p in per])) for name in PARAMS})
    return NCnetPlan(
        config=config,
        widths=widths,
        seeds=seeds,
        units=tuple(2 * n if config.unshared else n for n in widths),
        patterns=_frozen(config.patterns()),
        targets=_frozen(np.stack([d["y"] for d in data])),
        weights=_frozen(data[0]["w"]),
        train=_frozen(data[0]["train"]),
        held=_frozen(data[0]["held"]),
        head_masks=tuple(_frozen(head_mask(config, n)) for n in widths),
        inits=tuple(inits),
        trace_steps=tuple(sorted(config.trace_steps())),
    )
