"""Obviously correct, slow: a LoRA seed ensemble trained one member at a time, for the tests.

Checks :func:`gradcomp.lora.ensemble.train_vmap` and its fallback ``train_loop``. Written from
docs/lora.md ("Ensemble") and the module docstring of :mod:`gradcomp.lora.ensemble` only: member k
(row k of every ``init`` tensor and of ``data.labels`` / ``data.order``) loads its trainable
parameters into the model through :func:`torch.func.functional_call`, and at every step t

- reads the training words ``data.order[k, t]``; head t's loss is the mean cross-entropy of its
  logits against the member's labels; the training gradient is ``∇(L_A + L_B)``, one Adam step;
- at recorded steps (``schedule(t)`` and the last step, before that step's update) records the
  losses, the training / held-out accuracies (all training words / all held-out words),
  ``gram[l, i, j] = Σ_{p ∈ layer l} ⟨∂L_i/∂p, ∂L_j/∂p⟩`` per layer by a loop over task pairs,
  and for ``"all"`` the sum of the layers' Grams; ``component_gram[j, i, k]``, the same sum over
  row j of every ``lora_A`` weight and column j of every ``lora_B`` weight, by a loop over j;
  and ``diverged`` (a task loss was non-finite
  at this or an earlier step, or a trainable parameter is non-finite now).

The model is the thing the ensemble trains, not the thing checked: it is called as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from gradcomp.dims import ALL

__all__ = ["train_members"]

HEADS = ("A", "B")


def train_members(
    model: nn.Module,
    init: Mapping[str, torch.Tensor],
    data: Any,
    groups: Mapping[str, Sequence[str]],
    *,
    lr: float,
    schedule: Callable[[int], bool] = lambda t: True,
) -> dict[str, Any]:
    """Train each member alone, with its own Adam.

    Args:
        model: ``model(ids, mask) -> {"A": logits, "B": logits}``; its parameters named in
            ``init`` are the trainable ones.
        init: parameter name -> ``(K, *shape)`` initial values, one row per member.
        data: ``ids``, ``mask`` ``(n_words, length)``, ``labels (K, 2, n_words)``,
            ``order (K, n_steps + 1, batch)``, ``n_train`` (the first ``n_train`` words train).
        groups: layer name -> parameter names.
        lr: Adam learning rate.
        schedule: ``step -> bool``: the recorded steps (the last step always).

    Returns:
        ``steps``, ``layers`` (``[*groups, "all"]``) and member-major arrays ``loss``, ``acc``,
        ``heldout_acc`` ``(K, S, 2)``, ``gram (K, S, n_layers, 2, 2)`` (float64),
        ``diverged (K, S)`` bool.
    """
    model.eval()
    n_steps = data.order.shape[1] - 1
    steps = [t for t in range(n_steps) if schedule(t)] + [n_steps]
    members = [
        _member(model, {n: v[k] for n, v in init.items()}, data, k, groups, lr, steps)
        for k in range(data.labels.shape[0])
    ]
    out: dict[str, Any] = {"steps": steps, "layers": [*groups, ALL]}
    for name in members[0]:
        out[name] = np.array([m[name] for m in members])
    return out


def _member(
    model: nn.Module,
    init: dict[str, torch.Tensor],
    data: Any,
    k: int,
    groups: Mapping[str, Sequence[str]],
    lr: float,
    steps: list[int],
) -> dict[str, list]:
    params = {n: v.detach().clone().requires_grad_(True) for n, v in init.items()}
    names = list(params)
    opt = torch.optim.Adam([params[n] for n in names], lr=lr)
    labels = data.labels[k]  # (2, n_words)
    rec: dict[str, list] = {
        f: [] for f in ("loss", "acc", "heldout_acc", "gram", "component_gram", "diverged")
    }
    lora = [n for members in groups.values() for n in members]
    rank = next(int(params[n].shape[0]) for n in lora if ".lora_A" in n)
    bad_loss = False
    for t in range(steps[-1] + 1):
        words = data.order[k, t]
        out = functional_call(model, params, (data.ids[words], data.mask[words]), strict=False)
        losses = [
            nn.functional.cross_entropy(out[h], labels[i, words]) for i, h in enumerate(HEADS)
        ]
        bad_loss = bad_loss or not all(bool(torch.isfinite(v)) for v in losses)
        if t in steps:
            bad_param = not all(bool(torch.isfinite(v).all()) for v in params.values())
            rec["diverged"].append(bad_loss or bad_param)
            rec["loss"].append([float(v.detach()) for v in losses])
            grads = []
            for loss in losses:
                g = torch.autograd.grad(
                    loss, [params[n] for n in names], retain_graph=True, allow_unused=True
                )
                grads.append(
                    {
                        n: torch.zeros_like(params[n]) if x is None else x
                        for n, x in zip(names, g, strict=True)
                    }
                )
            layer_grams = [
                [
                    [
                        sum(
                            float((grads[i][n].double() * grads[j][n].double()).sum())
                            for n in members
                        )
                        for j in range(2)
                    ]
                    for i in range(2)
                ]
                for members in groups.values()
            ]
            rec["gram"].append([*layer_grams, np.sum(layer_grams, axis=0)])

            def entries(g: dict[str, torch.Tensor], j: int) -> list[torch.Tensor]:
                rows = [g[n][j] for n in lora if ".lora_A" in n]
                return rows + [g[n][:, j] for n in lora if ".lora_B" in n]

            rec["component_gram"].append(
                [
                    [
                        [
                            sum(
                                float((x.double() * y.double()).sum())
                                for x, y in zip(
                                    entries(grads[i], j), entries(grads[k], j), strict=True
                                )
                            )
                            for k in range(2)
                        ]
                        for i in range(2)
                    ]
                    for j in range(rank)
                ]
            )
            with torch.no_grad():
                logits = functional_call(model, params, (data.ids, data.mask), strict=False)
                right = [(logits[h].argmax(-1) == labels[i]).double() for i, h in enumerate(HEADS)]
            rec["acc"].append([float(r[: data.n_train].mean()) for r in right])
            rec["heldout_acc"].append([float(r[data.n_train :].mean()) for r in right])
        if t == steps[-1]:
            break
        total = torch.autograd.grad(
            losses[0] + losses[1], [params[n] for n in names], allow_unused=True
        )
        for n, d in zip(names, total, strict=True):
            params[n].grad = torch.zeros_like(params[n]) if d is None else d
        opt.step()
    return rec
