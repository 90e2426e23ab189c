"""Obviously correct, slow: NCnet built from its definition and trained one seed at a time.

Checks every engine of :func:`gradcomp.ncnet.run` (the fast path and its C kernel, the generic
vmap and loop trainers) seed by seed. Written from docs/ncnet.md ("Model and protocol") only; the
settings object is read as plain fields, and its patterns, targets, held-out mask, trace steps,
initial parameters and model are all constructed here:

- patterns: all ``2**k`` inputs in binary counting order (``x1`` the most significant bit),
  encoded ±1 (true = +1);
- targets: each task's Boolean expression evaluated by Python's own operators on each pattern;
- held-out patterns: ``holdout = m`` holds out the first m of
  ``numpy.random.default_rng(0).permutation(2**k)``, a tuple holds out those indices;
- init of seed s at width n: ``numpy.random.default_rng(SeedSequence([s, n]))`` draws the hidden
  weights ``W1 (m, k)`` (m = n, or 2n unshared: head A's units, then head B's), then the head
  weights ``(2, n)``, each normal with std ``init_scale / sqrt(fan_in)``; biases 0;
- model: ``h = act(x W1ᵀ + b1)``; head A reads units ``0..n-1`` (all of them when shared), head
  B units ``n..2n-1`` (all when shared): ``logit_t = h[units_t] · V[t, units_t] + c[t]``;
- head t's loss ``Σ_p w_p (log(1 + e^{logit}) − y_p logit)``, ``w_p = 1/P_train`` on training
  patterns, 0 on held-out ones; full-batch gradient descent on the sum of the two losses;
- at traced steps: loss, training accuracy, held-out accuracy (with a holdout), outcome ±1
  (training accuracy at least ``threshold``), per-task Gram of the hidden layer ``(W1, b1)`` and,
  with ``units``, per hidden unit (its row of ``W1`` and its bias); ``diverged`` from the first
  traced step with a non-finite parameter or loss, and NaN outcomes from then on.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["SETTING_PAIRS", "patterns", "targets", "trace_steps", "train_ncnet"]

#: the four (Alice, Bob) setting pairs, in the order of the ``setting`` axis of the output
SETTING_PAIRS = ((1, 1), (1, 2), (2, 1), (2, 2))


def patterns(k: int) -> np.ndarray:
    """``(2**k, k)`` inputs ±1; row p has ``x_i = +1`` when bit ``k − i`` of p is set."""
    return np.array(list(itertools.product([-1.0, 1.0], repeat=k)))


class _Bit:
    """A truth value with Boolean ``~ & | ^`` (Python's ``~`` on bool gives −2, so a wrapper)."""

    value: bool

    def __init__(self, value: Any) -> None:
        if isinstance(value, _Bit):
            value = value.value
        if value not in (0, 1):  # e.g. ~1 on a bare constant
            raise ValueError(f"not a truth value: {value!r}")
        self.value = bool(value)

    def __bool__(self) -> bool:
        return self.value

    def __invert__(self) -> _Bit:
        return _Bit(not self.value)

    def __and__(self, other: Any) -> _Bit:
        return _Bit(self.value and bool(_Bit(other)))

    def __or__(self, other: Any) -> _Bit:
        return _Bit(self.value or bool(_Bit(other)))

    def __xor__(self, other: Any) -> _Bit:
        return _Bit(self.value != bool(_Bit(other)))

    __rand__, __ror__, __rxor__ = __and__, __or__, __xor__


def targets(expr: str, k: int) -> np.ndarray:
    """``(2**k,)`` 0/1 truth table of ``expr`` over ``x1..xk``.

    Evaluated with ``eval`` on ``_Bit`` values and no builtins: meant for expressions that
    :class:`gradcomp.ncnet.NCnetConfig` has already validated (it rejects calls and attributes).
    """
    out = []
    for row in patterns(k):
        env = {f"x{i + 1}": _Bit(v > 0) for i, v in enumerate(row)}
        out.append(float(bool(_Bit(eval(expr, {"__builtins__": {}}, env)))))
    return np.array(out)


def trace_steps(every: Any, steps: int) -> list[int]:
    """The traced steps of docs/ncnet.md, always with the last step.

    ``None``: 0, the last step and ``round(geomspace(1, steps, 30))``; an int: 0, every, 2·every,
    ...; a tuple: those steps; a callable: the steps where it is true.
    """
    if every is None:
        if steps == 0:
            return [0]
        logs = {int(s) for s in np.round(np.geomspace(1, steps, 30))}
        return sorted(logs | {0, steps})
    if isinstance(every, int):
        return sorted(set(range(0, steps + 1, every)) | {steps})
    if callable(every):
        return sorted({s for s in range(steps + 1) if every(s)} | {steps})
    return sorted({int(s) for s in every} | {steps})


def _heldout(holdout: Any, n: int) -> np.ndarray:
    held = np.zeros(n, dtype=bool)
    if isinstance(holdout, int):
        held[np.random.default_rng(0).permutation(n)[:holdout]] = True
    else:
        held[list(holdout)] = True
    return held


def _init(config: Any, width: int, seed: int) -> dict[str, np.ndarray]:
    k, scale = config.inputs, config.init_scale
    m = 2 * width if config.unshared else width
    rng = np.random.default_rng(np.random.SeedSequence([seed, width]))
    w1 = rng.standard_normal((m, k)) * scale / math.sqrt(k)
    heads = rng.standard_normal((2, width)) * scale / math.sqrt(width)
    v = np.zeros((2, m))
    if config.unshared:
        v[0, :width], v[1, width:] = heads[0], heads[1]
    else:
        v[:] = heads
    return {"W1": w1, "b1": np.zeros(m), "V": v, "c": np.zeros(2)}


def _act(z: torch.Tensor, name: str) -> torch.Tensor:
    return {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid}[name](z)


def _one_run(
    config: Any,
    width: int,
    seed: int,
    x: torch.Tensor,
    y: torch.Tensor,
    held: np.ndarray,
    when: list[int],
) -> list[dict[str, np.ndarray]]:
    """The traced records of one run (one width, setting pair and seed)."""
    dtype = getattr(torch, config.dtype)
    p = {
        k: torch.tensor(v, dtype=dtype, requires_grad=True)
        for k, v in _init(config, width, seed).items()
    }
    m = p["W1"].shape[0]
    units = [range(width), range(width, 2 * width)] if config.unshared else [range(m)] * 2
    train = [i for i in range(len(held)) if not held[i]]
    test = [i for i in range(len(held)) if held[i]]

    def logits() -> list[torch.Tensor]:
        h = _act(x @ p["W1"].T + p["b1"], config.activation)
        return [h[:, list(u)] @ p["V"][t, list(u)] + p["c"][t] for t, u in enumerate(units)]

    def losses(z: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for t in range(2):
            per = torch.nn.functional.softplus(z[t]) - y[t] * z[t]
            out.append(per[train].sum() / len(train))
        return out

    records, bad = [], False
    for step in range(config.steps + 1):
        z = logits()
        task = losses(z)
        if step in when:
            loss = torch.stack(task).detach()
            bad = bad or not all(bool(torch.isfinite(v).all()) for v in [loss, *p.values()])
            right = [((z[t] > 0).to(dtype) == y[t]).detach().numpy() for t in range(2)]
            acc = np.array([r[train].mean() for r in right])
            rec = {"loss": loss.numpy(), "acc": acc, "diverged": np.array(bad)}
            if test:
                rec["heldout_acc"] = np.array([r[test].mean() for r in right])
            outcome = np.where(acc >= config.threshold - 1e-9, 1.0, -1.0)
            rec["outcome"] = np.full(2, np.nan) if bad else outcome
            g = [
                torch.autograd.grad(task[t], [p["W1"], p["b1"]], retain_graph=True)
                for t in range(2)
            ]
            rows = [torch.cat([gw, gb[:, None]], dim=1).double() for gw, gb in g]  # (m, k + 1)
            rec["gram"] = np.array(
                [[float((rows[i] * rows[j]).sum()) for j in range(2)] for i in range(2)]
            )
            if config.units:
                rec["unit_gram"] = np.array(
                    [
                        [
                            [float((rows[i][u] * rows[j][u]).sum()) for j in range(2)]
                            for i in range(2)
                        ]
                        for u in range(m)
                    ]
                )
            records.append(rec)
        if step == config.steps:
            break
        step_grads = torch.autograd.grad(task[0] + task[1], list(p.values()))
        with torch.no_grad():
            for v, d in zip(p.values(), step_grads, strict=True):
                v -= config.lr * d
    return records


def train_ncnet(config: Any, widths: Sequence[int], seeds: Sequence[int]) -> dict[str, np.ndarray]:
    """Every (width, setting pair, seed) run of NCnet, one after another.

    Args:
        config: NCnet settings read as fields (``inputs, alice, bob, activation, lr, steps,
            init_scale, unshared, holdout, trace_every, units, threshold, dtype``), e.g. a
            :class:`gradcomp.ncnet.NCnetConfig`.
        widths: hidden widths n.
        seeds: seeds.

    Returns:
        Arrays with axes ``(trace, width, setting, seed, ...)``, setting in
        :data:`SETTING_PAIRS` order: ``loss``, ``acc``, ``heldout_acc`` (with a holdout),
        ``outcome`` (float32, NaN when diverged) ``(..., head)``; ``diverged`` bool;
        ``gram (..., 2, 2)``; with ``config.units`` ``unit_gram (..., unit, 2, 2)`` NaN-padded to
        the largest unit count.
    """
    k = config.inputs
    dtype = getattr(torch, config.dtype)
    x = torch.tensor(patterns(k), dtype=dtype)
    table = [[targets(e, k) for e in tasks] for tasks in (config.alice, config.bob)]
    held = _heldout(config.holdout, 2**k)
    when = trace_steps(config.trace_every, config.steps)
    runs = [
        [
            [
                _one_run(
                    config,
                    n,
                    s,
                    x,
                    torch.tensor(np.stack([table[0][a - 1], table[1][b - 1]]), dtype=dtype),
                    held,
                    when,
                )
                for s in seeds
            ]
            for a, b in SETTING_PAIRS
        ]
        for n in widths
    ]
    out: dict[str, np.ndarray] = {}
    for name in runs[0][0][0][0]:
        cube = [[[[rec[name] for rec in run] for run in pair] for pair in w] for w in runs]
        if name == "unit_gram":  # pad the unit axis to the widest net
            most = max(len(rec) for w in cube for pair in w for run in pair for rec in run)
            cube = [
                [
                    [
                        [
                            np.concatenate([rec, np.full((most - len(rec), 2, 2), np.nan)])
                            for rec in run
                        ]
                        for run in pair
                    ]
                    for pair in w
                ]
                for w in cube
            ]
        out[name] = np.moveaxis(
            np.array(cube), 3, 0
        )  # (width, setting, seed, trace) -> trace first
    out["diverged"] = out["diverged"].astype(bool)
    out["outcome"] = out["outcome"].astype(np.float32)
    return out
