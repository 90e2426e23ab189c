"""NCnet's fast path: every width, setting pair and seed in one hand-derived computation.

Layout: hidden units of all widths are concatenated along one unit axis ``u`` (group ``g(u)`` is
the width they belong to) and runs along a trailing batch axis ``r = setting · K + seed_index``
(settings ordered (1,1), (1,2), (2,1), (2,2)). One step for all runs at once, with ``σ`` the
logistic function and ``w_p`` the pattern weights:

    Z[u,p,r] = Σ_i X[p,i] W[u,i,r] + b[u,r],      H = act(Z)
    L[g,p,t,r] = Σ_{u∈g} H[u,p,r] V[u,t,r] + c[g,t,r]
    G[g,p,t,r] = w_p (σ(L[g,p,t,r]) − y[p,t,r])              (∂ loss_t / ∂ L)
    ∂c = Σ_p G,   ∂V[u,t] = M[u,t] Σ_p G[g(u),p,t] H[u,p]
    ∂Z[u,p] = act'(Z[u,p]) Σ_t G[g(u),p,t] V[u,t],   ∂W = Xᵀ ∂Z,   ∂b = Σ_p ∂Z

These are the gradients autograd computes for the model of :mod:`gradcomp.ncnet._model`; the
tests check them against :func:`gradcomp.ensemble.train` and :func:`gradcomp.ensemble.train_loop`
seed by seed in float64.

Same bits on every engine: ``engine="c"`` runs the same step in the compiled kernel
``_kernel.c`` (SIMD lanes of 16 runs, OpenMP over width groups and lane blocks) between traced
steps (the traces are computed here), and a training step gives bit-identical parameters in
both, so the outcomes do not depend on the engine nor on whether a C compiler is present.
Both perform the same IEEE-754 operations in the same order, each rounded on its own:

- ``exp`` is :func:`exp_fixed` (Cody-Waite range reduction and a fixed polynomial, written out
  as elementwise operations; the same in ``_kernel.c``), not torch's or libm's ``exp``, which
  differ between libraries, vector widths and devices; tanh z = 1 − 2 · (1 / (e^{2z} + 1)),
  σ(x) = 1 / (e^{−x} + 1);
- ``Z`` sums ``b`` then ``x_i W_i`` for i = 1..k (x = ±1: every product is exact), ``L`` sums
  ``c`` then ``H_u V_u`` over the group's units in order (:func:`_unit_sum`);
- every sum over the patterns is :func:`_tree_sum`'s fixed pairwise order, never a torch
  reduction or a matrix product (their order depends on the library, the batch and the device);
- no fused multiply-add (``torch.add(..., alpha=a)`` fuses for a ≠ ±1; ``_kernel.c`` is compiled
  with ``-ffp-contract=off``), no division by a reciprocal estimate, no flushing of subnormals.

A run's numbers therefore do not depend on which other runs share the batch either.

Divergence: at every traced step a run is flagged when one of its parameters or task losses is
not finite, and stays flagged from then on (its outcome is NaN). Checking the parameters only at
the traced steps misses nothing: the update θ ← θ − lr·g keeps a non-finite entry non-finite
(inf − x is ±inf or NaN, NaN stays NaN), so a parameter that went non-finite between two traced
steps is still non-finite at the next one (the last step is always traced). Losses exist only at
traced steps, so a loss that overflows while the parameters stay finite counts from the first
traced step where it is non-finite.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from gradcomp.ncnet._plan import SETTING_PAIRS, NCnetPlan

__all__ = ["ENGINES", "PAD", "SETTING_PAIRS", "exp_fixed", "nonfinite_runs", "train_fast"]

#: the engines of this module: torch (any device) and the compiled CPU kernel
ENGINES = ("torch", "c")
#: the seed axis is padded to a multiple of this: a multiple of the C kernel's lanes, and no run
#: falls in the scalar tail of a vectorised torch kernel (every operation used rounds alike
#: there, but a cheap guard against one that does not)
PAD = 64


class _ExpConstants(NamedTuple):
    """exp_fixed's constants for one dtype (the same values as _kernel.c's literals)."""

    lo: float  #: clamp range [lo, hi]
    hi: float
    magic: float  #: 1.5 · 2^mant: x + magic − magic rounds x to an integer
    magic_bits: int  #: its bit pattern
    bias: int  #: exponent bias
    mant: int  #: mantissa bits
    itype: torch.dtype  #: the integer type of the same width
    c1: float  #: ln 2 = c1 + c2
    c2: float
    poly: tuple[float, ...]  #: the polynomial's coefficients, highest power first


def _exp_constants(
    dtype: torch.dtype, itype: torch.dtype, lo: float, c1: float, c2: float, poly: tuple[float, ...]
) -> _ExpConstants:
    """The constants of ``dtype``: clamp range [lo, −lo]; magic, its bits, bias and mantissa
    width from the format (``mant = −log2 eps``, ``bias = 2^(bits − mant − 2) − 1``)."""
    info = torch.finfo(dtype)
    mant = -int(math.log2(info.eps))
    magic = 1.5 * 2.0**mant
    magic_bits = int(torch.tensor(magic, dtype=dtype).view(itype).item())
    bias = 2 ** (info.bits - mant - 2) - 1
    return _ExpConstants(lo, -lo, magic, magic_bits, bias, mant, itype, c1, c2, poly)


_EXP = {
    torch.float32: _exp_constants(
        torch.float32,
        torch.int32,
        lo=-87.0,
        c1=0.693359375,
        c2=-2.12194440e-4,
        poly=(
            *(1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3),
            *(4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1),
        ),
    ),
    torch.float64: _exp_constants(
        torch.float64,
        torch.int64,
        lo=-708.0,
        c1=0.693145751953125,
        c2=1.42860682030941723212e-6,
        poly=tuple(1 / math.factorial(j) for j in range(13, 1, -1)),
    ),
}
LOG2E = 1.4426950408889634


def exp_fixed(x: torch.Tensor) -> torch.Tensor:
    """``exp(clamp(x, lo, hi))`` by explicit elementwise operations, bit-identical to _kernel.c.

    Cody & Waite (1980) range reduction: ``t = x log2(e) + M`` with ``M = 1.5 · 2^m`` rounds to
    the nearest integer ``n = t − M``; ``r = (x − n C1) − n C2`` with ``ln 2 = C1 + C2`` (C1 has
    few bits, so ``n C1`` is exact); ``exp(r) ≈ ((p(r) r²) + r) + 1`` with ``p`` by Horner (float32:
    cephes ``expf``'s minimax coefficients, ≤ 1 ulp; float64: Taylor to r¹³, < 1e-17 for
    ``|r| ≤ ln2 / 2``); times ``2^n`` built from the exponent bits of ``t``. The clamp (float32
    ±87, float64 ±708) keeps the result and ``1 / (1 + result)`` normal numbers. NaN stays NaN.

    Args:
        x: float32 or float64 tensor (not modified).

    Returns:
        A new tensor of ``x``'s shape and dtype.
    """
    c = _EXP.get(x.dtype)
    if c is None:
        raise ValueError(f"exp_fixed supports float32 and float64, not {x.dtype}")
    x = x.clamp(c.lo, c.hi)
    t = (x * LOG2E).add_(c.magic)
    n = t - c.magic
    r = x.sub_(n * c.c1).sub_(n.mul_(c.c2))  # x is a fresh tensor from clamp
    z = r * r
    p = torch.full_like(r, c.poly[0])
    for coef in c.poly[1:]:
        p.mul_(r).add_(coef)
    y = p.mul_(z).add_(r).add_(1.0)
    scale = t.view(c.itype).sub_(c.magic_bits - c.bias).bitwise_left_shift_(c.mant)
    return y.mul_(scale.view(x.dtype))


def _sigmoid(x: torch.Tensor) -> torch.Tensor:
    """σ(x) = 1 / (exp_fixed(−x) + 1) (a new tensor)."""
    return exp_fixed(-x).add_(1.0).reciprocal_()


def _act(z: torch.Tensor, name: str) -> torch.Tensor:
    """act(z) as in _kernel.c's ``act_f`` (a new tensor; tanh z = 1 − 2 · (1 / (e^{2z} + 1)))."""
    if name == "tanh":
        return exp_fixed(z * 2.0).add_(1.0).reciprocal_().mul_(2.0).neg_().add_(1.0)
    if name == "sigmoid":
        return _sigmoid(z)
    return torch.where(z > 0, z, torch.zeros((), dtype=z.dtype, device=z.device))


def _tree_sum(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum over ``dim`` in a fixed pairwise order (that of _kernel.c's ``tree_sum``).

    While ``m > 1`` entries remain: entry ``p`` += entry ``p + ⌈m/2⌉`` for ``p < ⌊m/2⌋``, and
    ``m ← ⌈m/2⌉``. The dimension is removed.
    """
    m = x.shape[dim]
    while m > 1:
        h = m // 2
        s = x.narrow(dim, 0, h) + x.narrow(dim, m - h, h)
        x = s if m == 2 * h else torch.cat([s, x.narrow(dim, h, m - 2 * h)], dim)
        m -= h
    return x.squeeze(dim)


def _unit_sum(
    c: torch.Tensor, prod: torch.Tensor, steps: list[tuple[torch.Tensor, torch.Tensor]]
) -> torch.Tensor:
    """``L[g] = ((c[g] + prod[u_g0]) + prod[u_g1]) + ...`` over the units of group g in order.

    ``steps[j] = (groups, units)``: the groups with a j-th unit and those units (an index
    added once per step: exact and deterministic on any device).
    """
    out = c.clone()
    for groups, units in steps:
        out.index_add_(0, groups, prod.index_select(0, units))
    return out


def _preactivations(W: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
    """``Z[u, p, r] = b[u, r] + Σ_i x_pi W[u, i, r]`` over all 2**k patterns, bit by bit.

    Patterns are in binary counting order with x1 the most significant bit (as
    :func:`gradcomp.ncnet._expr.input_patterns`), so ``Z ← [Z − W_i, Z + W_i]`` along a new
    pattern axis for i = 1..k: about 2 passes over the output instead of 2k.
    """
    U, _, B = W.shape
    sign = torch.tensor([-1.0, 1.0], dtype=W.dtype, device=W.device).view(1, 1, 2, 1)
    Z = b  # (U, 1, B)
    for i in range(k):
        Z = (Z.unsqueeze(2) + W[:, i : i + 1].unsqueeze(2) * sign).reshape(U, -1, B)
    return Z


def _input_grads(dZ: torch.Tensor, k: int) -> torch.Tensor:
    """``∂W[u, i, r] = Σ_p x_pi ∂Z[u, p, r]`` as (patterns with x_i = +1) − (x_i = −1)."""
    U, P, B = dZ.shape
    out = []
    for i in range(k):
        v = dZ.view(U, 2**i, 2, P // 2 ** (i + 1), B)
        out.append((v[:, :, 1] - v[:, :, 0]).sum((1, 2)))
    return torch.stack(out, 1)  # (U, k, B)


def _group_sum(
    x: torch.Tensor, gidx: torch.Tensor, bounds, G: int, slices: bool | None = None
) -> torch.Tensor:
    """Sum over the units of each width group (axis 0).

    On the CPU ``index_add_`` adds unit slabs one after another (deterministic); on other devices
    it uses atomics, whose order may vary, so each group's contiguous slice is summed instead.
    """
    if not (x.device.type != "cpu" if slices is None else slices):
        return torch.zeros(G, *x.shape[1:], dtype=x.dtype, device=x.device).index_add_(0, gidx, x)
    if bounds is None:
        bounds = [0, *torch.bincount(gidx, minlength=G).cumsum(0).tolist()]
    return torch.stack([x[bounds[g] : bounds[g + 1]].sum(0) for g in range(G)])


def nonfinite_runs(W, b, V, c, gidx: torch.Tensor, G: int) -> torch.Tensor:
    """``(G, B)`` bool: run r of width group g has a non-finite parameter.

    ``W (U, k, B)``, ``b (U, 1, B)``, ``V (U, 2, B)`` per unit (unit u in group ``gidx[u]``) and
    ``c (G, 2, B)``.
    """
    bad_unit = ~(torch.isfinite(W).all(1) & torch.isfinite(b).all(1) & torch.isfinite(V).all(1))
    bad = torch.zeros(G, W.shape[-1], dtype=torch.int32, device=W.device)
    bad.index_add_(0, gidx, bad_unit.to(torch.int32))  # integer counts: exact on any device
    return (bad > 0) | ~torch.isfinite(c).all(1)


def _act_grad(h: torch.Tensor, name: str) -> torch.Tensor:
    """act'(z) written in terms of h = act(z)."""
    if name == "tanh":
        return 1 - h * h
    if name == "sigmoid":
        return h * (1 - h)
    return (h > 0).to(h.dtype)


def _stack(plan: NCnetPlan, pad: int, dtype, device):
    """Initial parameters of all runs in the fused layout (common random numbers over settings).

    The seed axis is padded with ``pad`` copies of the last seed's parameters.
    """
    per: dict[str, list[np.ndarray]] = {"W1": [], "b1": [], "V": [], "c": []}
    for inits in plan.inits:
        for name in per:
            a = np.moveaxis(inits[name], 0, -1)  # (..., K)
            per[name].append(np.concatenate([a, np.repeat(a[..., -1:], pad, axis=-1)], axis=-1))
    W = np.concatenate(per["W1"], axis=0)  # (U, k, K)
    b = np.concatenate(per["b1"], axis=0)[:, None, :]  # (U, 1, K)
    V = np.concatenate([v.transpose(1, 0, 2) for v in per["V"]], axis=0)  # (U, 2, K)
    c = np.stack(per["c"])  # (G, 2, K)

    def tile(a: np.ndarray) -> torch.Tensor:  # (..., K) -> (..., 4 * K), settings-major
        t = torch.as_tensor(a, dtype=dtype, device=device)
        return t.unsqueeze(-2).expand(*t.shape[:-1], 4, t.shape[-1]).reshape(*t.shape[:-1], -1)

    return tile(W).contiguous(), tile(b).contiguous(), tile(V).contiguous(), tile(c).contiguous()


def train_fast(
    plan: NCnetPlan,
    *,
    device: str | torch.device = "cpu",
    progress=None,
    engine: str = "torch",
) -> dict[str, np.ndarray]:
    """Train every (width, setting pair, seed) run of ``plan`` at once.

    Args:
        plan: the runs (:func:`gradcomp.ncnet.plan`); results depend only on (config, width,
            seed).
        device: torch device.
        progress: optional tqdm bar, advanced by one per step.
        engine: ``"torch"`` (any device) or ``"c"`` (the compiled CPU kernel of
            :mod:`gradcomp.ncnet._compiled`; the traces are still computed by torch).

    Returns:
        Traces with shape ``(trace, width, setting, seed, ...)``: ``loss``, ``acc``,
        ``outcome`` (``(..., task)``, ±1 float32, NaN once the run diverged), ``diverged``
        (bool, see the module docstring), ``heldout_acc`` when patterns are held out, ``gram``
        ``(..., task, task_j)`` and, with ``config.units``, ``unit_gram``
        ``(..., unit, task, task_j)`` NaN-padded to the largest width.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES} here, got {engine!r}")
    config, widths = plan.config, plan.widths
    dtype, dev = config.torch_dtype, torch.device(device)
    n_real = len(plan.seeds)
    pad = -n_real % PAD  # padding runs, dropped at the end
    K, G = n_real + pad, len(widths)
    B = 4 * K
    act = config.activation
    W, b, V, c = _stack(plan, pad, dtype, dev)
    m = list(plan.units)
    gidx = torch.repeat_interleave(torch.arange(G, device=dev), torch.tensor(m, device=dev))
    bounds = np.concatenate([[0], np.cumsum(m)]).tolist()
    unit_steps = [
        (
            torch.tensor([g for g in range(G) if m[g] > j], device=dev),
            torch.tensor([bounds[g] + j for g in range(G) if m[g] > j], device=dev),
        )
        for j in range(max(m))
    ]
    mask = torch.as_tensor(
        np.concatenate([hm.T for hm in plan.head_masks]), dtype=dtype, device=dev
    ).unsqueeze(-1)  # (U, 2, 1)
    X = torch.tensor(plan.patterns, dtype=dtype, device=dev)  # (P, k)
    P = X.shape[0]
    k = X.shape[1]
    XT = X.T.reshape(1, k, P, 1).contiguous()
    y = torch.tensor(plan.targets.transpose(2, 1, 0), dtype=dtype, device=dev)  # (P, 2, 4)
    Y = y.unsqueeze(-1).expand(P, 2, 4, K).reshape(P, 2, B)  # (P, 2, B)
    wp = torch.tensor(plan.weights, dtype=dtype, device=dev).view(P, 1, 1)
    train = torch.tensor(plan.train, dtype=dtype, device=dev).view(P, 1, 1)
    held = torch.tensor(plan.held, dtype=dtype, device=dev).view(P, 1, 1)
    lr = config.lr
    when = list(plan.trace_steps)
    records: list[dict[str, torch.Tensor]] = []

    lr_mask = mask * lr  # (U, 2, 1): V's step is (lr · mask) · ∂V, as in _kernel.c

    def forward():
        # the operations and order of _kernel.c (see the module docstring)
        H = _act(_preactivations(W, b, k), act)  # (U, P, B)
        prod = H.unsqueeze(2) * V.unsqueeze(1)  # (U, P, 2, B)
        L = _unit_sum(c.unsqueeze(1).expand(G, P, 2, B), prod, unit_steps)  # (G, P, 2, B)
        Gd = _sigmoid(L).sub_(Y).mul_(wp)  # (G, P, 2, B)
        return H, L, Gd, Gd.index_select(0, gidx)  # Gu: (U, P, 2, B)

    if engine == "c":
        _train_compiled(
            config,
            W,
            b,
            V,
            c,
            mask,
            m,
            X,
            y,
            wp,
            K,
            when,
            progress,
            lambda: records.append(
                _trace(config, XT, *_unpack(forward()), Y, wp, train, held, (W, b, V, c), gidx, G)
            ),
        )
    else:
        for t in range(config.steps + 1):
            H, L, Gd, Gu = forward()
            if t in when:
                params = (W, b, V, c)
                records.append(_trace(config, XT, L, Gu, H, Y, wp, train, held, params, gidx, G))
            if t == config.steps:
                break
            # sums over patterns in _tree_sum's order, products in _kernel.c's order
            dc = _tree_sum(Gd, 1)  # (G, 2, B)
            dV = _tree_sum(Gu * H.unsqueeze(2), 1)  # (U, 2, B)
            dZ = (Gu[:, :, 0] * V[:, :1]).add_(Gu[:, :, 1] * V[:, 1:]).mul_(_act_grad(H, act))
            b.sub_(_tree_sum(dZ, 1).unsqueeze(1).mul_(lr))
            W.sub_(_tree_sum(dZ.unsqueeze(1) * XT, 2).mul_(lr))  # x_pi ∂Z[p], x = ±1: exact
            V.sub_(dV.mul_(lr_mask))
            c.sub_(dc.mul_(lr))
            if progress is not None:
                progress.update(1)
    out = _collect(records, widths, m, K, config.threshold)
    return {name: a[:, :, :, :n_real] for name, a in out.items()}


def _unpack(fwd: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    H, L, _, Gu = fwd
    return L, Gu, H


def _train_compiled(config, W, b, V, c, mask, m, X, y, wp, K, when, progress, record) -> None:
    """Advance the runs with the compiled kernel between traced steps (``record`` at each)."""
    from gradcomp.ncnet._compiled import load

    if W.device.type != "cpu":
        raise ValueError("engine='c' runs on the CPU only: use engine='torch' on other devices")
    kernel = load(W.dtype)
    if K % kernel.lanes:
        raise ValueError(f"internal: seeds padded to {K}, not a multiple of {kernel.lanes}")
    gstart = torch.tensor(np.concatenate([[0], np.cumsum(m)]), dtype=torch.int32)
    mask2 = mask.reshape(-1, 2).contiguous()
    Xc, yc, wpc = X.contiguous(), y.contiguous(), wp.reshape(-1).contiguous()
    act = {"tanh": 0, "relu": 1, "sigmoid": 2}[config.activation]
    t = 0
    for target in when:
        if target > t:
            rc = kernel(
                W=W.data_ptr(),
                b=b.data_ptr(),
                V=V.data_ptr(),
                c=c.data_ptr(),
                mask=mask2.data_ptr(),
                gstart=gstart.data_ptr(),
                G=len(m),
                X=Xc.data_ptr(),
                Y=yc.data_ptr(),
                wp=wpc.data_ptr(),
                k=X.shape[1],
                P=X.shape[0],
                K=K,
                steps=target - t,
                lr=config.lr,
                act=act,
            )
            if rc != 0:
                raise RuntimeError(f"the compiled kernel rejected its input (code {rc})")
            if progress is not None:
                progress.update(target - t)
            t = target
        record()


def _trace(config, XT, L, Gu, H, Y, wp, train, held, params, gidx, G) -> dict[str, torch.Tensor]:
    """Losses, accuracies, divergence and per-task Gram statistics of the hidden layer at one step.

    ``diverged (G, B)``: a parameter or a task loss of the run is not finite at this step.
    """
    W, b, V, c = params
    out = {"loss": (torch.nn.functional.softplus(L) - Y * L).mul_(wp).sum(1)}  # (G, 2, B)
    out["diverged"] = nonfinite_runs(W, b, V, c, gidx, G) | ~torch.isfinite(out["loss"]).all(1)
    correct = ((L > 0).to(L.dtype) == Y).to(L.dtype)
    out["acc"] = (correct * train).sum(1) / train.sum()
    if held.sum() > 0:
        out["heldout_acc"] = (correct * held).sum(1) / held.sum()
    # per-task gradients of the hidden layer: ∂Z_t = G_t V_t act'(Z)
    dZ = Gu * V.unsqueeze(1) * _act_grad(H, config.activation).unsqueeze(2)  # (U, P, 2, B)
    U, P, _, B = dZ.shape
    gW = _input_grads(dZ.reshape(U, P, 2 * B), XT.shape[1]).reshape(U, -1, 2, B)  # (U, k, 2, B)
    g = torch.cat([gW, dZ.sum(1, keepdim=True)], dim=1)  # (U, k + 1, 2, B)
    ug = (g.unsqueeze(3) * g.unsqueeze(2)).sum(1)  # (U, 2, 2, B)
    out["gram"] = _group_sum(ug, gidx, None, G)
    if config.units:
        out["unit_gram"] = ug
    return {k: v.detach().cpu() for k, v in out.items()}


def _collect(records, widths, m, K, threshold) -> dict[str, np.ndarray]:
    """Stack records into ``(trace, width, setting, seed, ...)`` arrays."""
    out: dict[str, np.ndarray] = {}
    G = len(widths)
    for name in records[0]:
        a = torch.stack([r[name] for r in records]).numpy()  # (T, G|U, ..., 4K)
        a = a.reshape(*a.shape[:-1], 4, K)
        a = np.moveaxis(a, (-2, -1), (2, 3))  # (T, G|U, 4, K, ...)
        if name == "unit_gram":
            pad = np.full((a.shape[0], G, *a.shape[2:4], max(m), *a.shape[4:]), np.nan, a.dtype)
            start = 0
            for g, mg in enumerate(m):
                pad[:, g, :, :, :mg] = np.moveaxis(a[:, start : start + mg], 1, 3)
                start += mg
            a = pad
        out[name] = a
    out["diverged"] = np.logical_or.accumulate(out["diverged"], axis=0)  # from its first step on
    solved = np.where(out["acc"] >= threshold - 1e-6, 1.0, -1.0).astype(np.float32)
    out["outcome"] = np.where(out["diverged"][..., None], np.float32(np.nan), solved)
    return out
