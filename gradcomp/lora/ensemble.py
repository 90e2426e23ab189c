"""Seed ensembles of a LoRA model: the frozen base is shared, the per-run parameters are stacked.

One *member* is one training run: a seed (LoRA initialisation, head initialisation and data order)
together with a setting pair (Alice's task for head A, Bob's task for head B). Members are ordered
``(seed, alice, bob)``; with common random numbers the four members of a seed share their
initialisation and data order and differ only in the tasks.

:func:`train_vmap` stacks the LoRA and head parameters of all members along a leading axis and runs
one ``torch.vmap`` of ``torch.func.functional_call`` over them (the frozen base weights are shared,
not copied); :func:`train_loop` trains the members one after another with the same code path minus
the vmap — the fallback. Both are tested against the independent
:func:`gradcomp.reference.lora.train_members`. Adam is elementwise, so one Adam on
the stacked parameters equals one Adam per member. The model is put in eval mode (dropout off).

At every recorded step the per-task gradients ``g_A = ∇L_A``, ``g_B = ∇L_B`` of each member's LoRA
parameters give the Gram matrix ``G_ij = <g_i, g_j>`` per adapted module (``layer``) and for all of
them together (``"all"``, the sum of the per-module Grams), as in ``gradcomp.record``; the training
gradient is ``g_A + g_B`` (heads: their own task's gradient), so recording never changes training.

Divergence: a member is ``diverged`` at a recorded step when one of its task losses was not
finite at any step so far (the losses are computed at every step, so this is checked at every
step) or one of its trainable parameters is not finite now. Checking parameters at recorded
steps only misses nothing: Adam's update θ ← θ − lr·m̂/(√v̂ + ε) keeps a non-finite entry
non-finite, and the final step is always recorded.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from gradcomp import gram as core
from gradcomp.dims import ALL

__all__ = [
    "Batches",
    "Trace",
    "batch_order",
    "concat",
    "gram",
    "init_member",
    "init_members",
    "member_rows",
    "member_table",
    "train_loop",
    "train_vmap",
]

TASKS = ("A", "B")
#: the per-member arrays of a :class:`Trace`
FIELDS = ("loss", "acc", "heldout_acc", "gram", "component_gram", "diverged")


@dataclass
class Batches:
    """Tokenised words and labels, prepared once up front.

    Attributes:
        ids, mask: ``(n_words, length)`` token ids and attention mask; the first ``n_train`` rows
            are training words, the rest held-out words.
        labels: ``(n_members, 2, n_words)`` 0/1 labels of head A and head B for each member.
        order: ``(n_members, n_steps + 1, batch)`` training-word indices per step (the extra step
            is the batch the final statistics are computed on).
        n_train: number of training words.
        hidden: ``(n_words, length, hidden)`` output of the frozen layers below the first
            adapted one (:meth:`gradcomp.lora.model.LoraHeads.frozen_input`), or ``None``: the
            model then runs its full forward on ``ids``.
    """

    ids: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor
    order: torch.Tensor
    n_train: int
    hidden: torch.Tensor | None = None

    def inputs(self, words: torch.Tensor | slice) -> tuple[torch.Tensor, ...]:
        """The model's inputs for these words: ``(ids, mask)`` or ``(ids, mask, hidden)``."""
        out = (self.ids[words], self.mask[words])
        return out if self.hidden is None else (*out, self.hidden[words])

    def members(self, rows: slice) -> Batches:
        """The same words for a block of members (their labels and data order)."""
        return Batches(
            self.ids, self.mask, self.labels[rows], self.order[rows], self.n_train, self.hidden
        )


@dataclass
class Trace:
    """What an ensemble run returns, member-major (``K`` members, ``S`` recorded steps).

    ``loss``, ``acc``, ``heldout_acc``: ``(K, S, 2)``; ``gram``: ``(K, S, n_layers, 2, 2)`` with
    ``layers`` naming axis 2 (last entry ``"all"``); ``component_gram``: ``(K, S, r, 2, 2)``, the
    Gram of rank component j over every adapted module (:func:`component_gram`; the components
    sum to the ``"all"`` Gram); ``diverged``: ``(K, S)`` bool (see the module docstring);
    ``steps``: the recorded step numbers.
    """

    steps: list[int]
    layers: list[str]
    loss: np.ndarray
    acc: np.ndarray
    heldout_acc: np.ndarray
    gram: np.ndarray
    component_gram: np.ndarray
    diverged: np.ndarray


def member_rows(seeds: range | list[int], *, diagonal: bool = False) -> np.ndarray:
    """``(K, 3)`` rows ``(seed, alice, bob)`` in the member order (``diagonal``: alice == bob)."""
    return np.array(
        [(s, x, y) for s in seeds for x in (1, 2) for y in (1, 2) if not diagonal or x == y]
    )


def member_table(n_seeds: int) -> np.ndarray:
    """``(K, 3)`` rows ``(seed index, alice, bob)`` in the member order, ``K = 4 * n_seeds``."""
    return member_rows(range(n_seeds))


def batch_order(n_train: int, n_steps: int, batch: int | None, seed: int) -> torch.Tensor:
    """``(n_steps + 1, batch)`` word indices: concatenated random permutations (the data order)."""
    if batch is None or batch >= n_train:
        return torch.arange(n_train).expand(n_steps + 1, n_train).clone()
    g = torch.Generator().manual_seed(int(seed))
    need = (n_steps + 1) * batch
    perms = [torch.randperm(n_train, generator=g) for _ in range(math.ceil(need / n_train))]
    return torch.cat(perms)[:need].view(n_steps + 1, batch)


def init_member(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Initial trainable parameters of one seed: LoRA A (Kaiming-uniform, as peft), LoRA B = 0,
    heads as ``nn.Linear`` — all drawn from a generator seeded with ``seed``."""
    g = torch.Generator().manual_seed(int(seed))
    out = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        t = torch.empty_like(p, device="cpu")
        if ".lora_B" in name:
            t.zero_()
        elif t.dim() >= 2:
            nn.init.kaiming_uniform_(t, a=math.sqrt(5), generator=g)
        else:
            fan_in = _fan_in(model, name) or p.numel()
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(t, -bound, bound, generator=g)
        out[name] = t.to(p.device)
    return out


def init_members(model: nn.Module, rows: np.ndarray) -> dict[str, torch.Tensor]:
    """:func:`init_member` of each row's seed, stacked: parameter name -> ``(K, *shape)``."""
    inits = [init_member(model, int(s)) for s, _, _ in rows]
    return {n: torch.stack([d[n] for d in inits]) for n in inits[0]}


def _fan_in(model: nn.Module, bias_name: str) -> int:
    weight = dict(model.named_parameters()).get(bias_name.removesuffix("bias") + "weight")
    return int(weight.shape[1]) if weight is not None and weight.dim() == 2 else 0


def _losses_fn(model: nn.Module) -> Callable[..., torch.Tensor]:
    def losses(params, y, *inputs):  # y: (2, batch) -> (2,) task losses
        out = functional_call(model, params, inputs, strict=False)
        return torch.stack([nn.functional.cross_entropy(out[t], y[i]) for i, t in enumerate(TASKS)])

    return losses


def _correct_fn(model: nn.Module) -> Callable[..., torch.Tensor]:
    def correct(params, y, *inputs):  # -> (2,) numbers of correct predictions
        out = functional_call(model, params, inputs, strict=False)
        return torch.stack([(out[t].argmax(-1) == y[i]).sum() for i, t in enumerate(TASKS)])

    return correct


def gram(grads: list[dict[str, torch.Tensor]], groups: dict[str, list[str]]) -> torch.Tensor:
    """Per-member Gram matrices ``(K, n_layers + 1, T, T)`` of per-task gradients.

    Args:
        grads: one dict per task, parameter name -> ``(K, *shape)`` gradient.
        groups: layer name -> parameter names; the extra last layer is ``"all"`` (sum of blocks).
    """
    per_layer = [
        core.gram([torch.stack([g[n] for g in grads], dim=1) for n in names], lead=2)
        for names in groups.values()
    ]
    return core.with_total(torch.stack(per_layer, dim=1), dim=1)


def component_gram(grads: list[dict[str, torch.Tensor]], names: list[str]) -> torch.Tensor:
    """Per-member Gram matrices ``(K, r, T, T)`` of each LoRA rank component.

    Component j of an adapter ``ΔW = B A`` is row j of ``A`` and column j of ``B``; its Gram sums
    ``<g_t, g_s>`` over those entries of every adapted module in ``names`` (other parameters, e.g.
    the heads, are skipped). Summed over j it is the Gram of all LoRA parameters.
    """
    total = None
    for n in names:
        g = torch.stack([gr[n] for gr in grads], dim=1)  # (K, T, *shape)
        g = g.to(core.acc_dtype(g.dtype))
        if ".lora_A" in n:  # (K, T, r, in)
            part = torch.einsum("ktri,ksri->krts", g, g)
        elif ".lora_B" in n:  # (K, T, out, r)
            part = torch.einsum("ktor,ksor->krts", g, g)
        else:
            continue
        total = part if total is None else total + part
    if total is None:
        raise ValueError("no LoRA parameter (.lora_A / .lora_B) among the recorded parameters")
    return total


def _run(
    model: nn.Module,
    init: dict[str, torch.Tensor],
    data: Batches,
    groups: dict[str, list[str]],
    *,
    lr: float,
    schedule: Callable[[int], bool],
    vectorised: bool,
    eval_chunk: int,
) -> Trace:
    model.eval()  # dropout off: a run's randomness is its seed (init and data order) only
    params = {n: v.detach().clone().requires_grad_(True) for n, v in init.items()}
    opt = torch.optim.Adam(params.values(), lr=lr, foreach=False)
    loss_fn, correct_fn = _losses_fn(model), _correct_fn(model)
    n_inputs = len(data.inputs(slice(0, 1)))
    if vectorised:
        f_loss = torch.vmap(loss_fn)
        f_correct = torch.vmap(correct_fn, in_dims=(0, 0, *[None] * n_inputs))
    else:  # one member: the same functions, called without vmap

        def f_loss(p, y, *inputs):
            return loss_fn({n: v[0] for n, v in p.items()}, y[0], *(x[0] for x in inputs))[None]

        def f_correct(p, y, *inputs):
            return correct_fn({n: v[0] for n, v in p.items()}, y[0], *inputs)[None]

    n_steps = data.order.shape[1] - 1
    steps = [t for t in range(n_steps) if schedule(t)] + [n_steps]
    recorded = set(steps)
    rows: dict[str, list[torch.Tensor]] = {f: [] for f in FIELDS}
    names = list(params)
    lora_names = [n for names_ in groups.values() for n in names_]
    leaves = [params[n] for n in names]
    bad_loss = torch.zeros(data.order.shape[0], dtype=torch.bool, device=data.order.device)
    for t in range(n_steps + 1):
        idx = data.order[:, t]  # (K, batch)
        y = torch.gather(data.labels, 2, idx[:, None, :].expand(-1, 2, -1))
        losses = f_loss(params, y, *data.inputs(idx))  # (K, 2)
        bad_loss |= ~torch.isfinite(losses.detach()).all(1)  # every step: one small op
        if t in recorded:
            with torch.no_grad():
                bad = bad_loss.clone()
                for n in names:
                    bad |= ~torch.isfinite(params[n].reshape(len(bad), -1)).all(1)
            rows["diverged"].append(bad)
            per_task = []
            for i in range(len(TASKS)):
                gt = torch.autograd.grad(
                    losses[:, i].sum(), leaves, retain_graph=True, allow_unused=True
                )
                per_task.append(
                    {n: _zero_if_none(v, params[n]) for n, v in zip(names, gt, strict=True)}
                )
            grads = [per_task[0][n] + per_task[1][n] for n in names]
            rows["gram"].append(gram(per_task, groups).detach())
            rows["component_gram"].append(component_gram(per_task, lora_names).detach())
            rows["loss"].append(losses.detach())
            with torch.no_grad():
                rows["acc"].append(_accuracy(f_correct, params, data, 0, data.n_train, eval_chunk))
                n_all = data.ids.shape[0]
                rows["heldout_acc"].append(
                    _accuracy(f_correct, params, data, data.n_train, n_all, eval_chunk)
                )
        else:
            plain = torch.autograd.grad(losses.sum(), leaves, allow_unused=True)
            grads = [_zero_if_none(gp, params[n]) for n, gp in zip(names, plain, strict=True)]
        if t == n_steps:
            break
        for n, total in zip(names, grads, strict=True):
            params[n].grad = total
        opt.step()
    stack = {k: torch.stack(v, dim=1).cpu().numpy() for k, v in rows.items()}
    return Trace(steps, [*groups, ALL], **{k: stack[k] for k in FIELDS})


def _zero_if_none(g: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if g is None else g


def _accuracy(f_correct, params, data: Batches, lo: int, hi: int, chunk: int) -> torch.Tensor:
    counts = [
        f_correct(params, data.labels[:, :, sl], *data.inputs(sl))
        for sl in (slice(a, min(hi, a + chunk)) for a in range(lo, hi, chunk))
    ]
    return torch.stack(counts).sum(0).to(torch.float64) / (hi - lo)


def train_vmap(
    model: nn.Module,
    init: dict[str, torch.Tensor],
    data: Batches,
    groups: dict[str, list[str]],
    *,
    lr: float = 1e-3,
    schedule: Callable[[int], bool] = lambda t: True,
    eval_chunk: int = 256,
) -> Trace:
    """Train all members at once: one vmap over the stacked parameters ``init`` (``(K, ...)``).

    Args:
        model: the LoRA model whose trainable parameters ``init`` replaces (frozen base shared).
        init: parameter name -> ``(K, *shape)`` initial values, one row per member.
        data: tokens, per-member labels and data order (:class:`Batches`).
        groups: layer name -> LoRA parameter names (``lora_layers(model)``).
        lr: Adam learning rate.
        schedule: ``step -> bool``: when to record statistics; the final step is always recorded.
        eval_chunk: words per evaluation forward.
    """
    return _run(
        model, init, data, groups, lr=lr, schedule=schedule, vectorised=True, eval_chunk=eval_chunk
    )


def train_loop(
    model: nn.Module,
    init: dict[str, torch.Tensor],
    data: Batches,
    groups: dict[str, list[str]],
    *,
    lr: float = 1e-3,
    schedule: Callable[[int], bool] = lambda t: True,
    eval_chunk: int = 256,
) -> Trace:
    """Fallback of :func:`train_vmap`: one member at a time, own Adam, no vmap."""
    traces = []
    for k in range(data.labels.shape[0]):
        one = data.members(slice(k, k + 1))
        traces.append(
            _run(
                model,
                {n: v[k : k + 1] for n, v in init.items()},
                one,
                groups,
                lr=lr,
                schedule=schedule,
                vectorised=False,
                eval_chunk=eval_chunk,
            )
        )
    return concat(traces)


def concat(traces: list[Trace]) -> Trace:
    """Members of several traces (same steps and layers) as one trace, in order."""
    cat = {f: np.concatenate([getattr(tr, f) for tr in traces]) for f in FIELDS}
    return Trace(traces[0].steps, traces[0].layers, **cat)
