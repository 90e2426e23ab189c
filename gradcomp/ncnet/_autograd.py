"""NCnet's autograd engines ``"vmap"`` and ``"loop"``: a plan through :mod:`gradcomp.ensemble`.

The production fallbacks to the hand-derived engines of :mod:`gradcomp.ncnet._fast`: the model of
:mod:`gradcomp.ncnet._model` trained by :func:`gradcomp.ensemble.train` (``"vmap"``: one width at
a time, its four setting pairs and all seeds in one vmap) or :func:`gradcomp.ensemble.train_loop`
(``"loop"``: one run at a time). The tests' independent construction is
:func:`gradcomp.reference.ncnet.train_ncnet`.
"""

from __future__ import annotations

import numpy as np
import torch

from gradcomp.ensemble import train, train_loop
from gradcomp.ncnet._model import problem
from gradcomp.ncnet._plan import PARAMS, NCnetPlan

__all__ = ["ENGINES", "train_autograd"]

#: the engines of this module
ENGINES = ("vmap", "loop")


def train_autograd(
    plan: NCnetPlan,
    *,
    engine: str = "vmap",
    device: str | torch.device = "cpu",
    progress=None,
) -> dict[str, np.ndarray]:
    """Same output as :func:`gradcomp.ncnet._fast.train_fast`, through autograd.

    Args:
        plan: the runs (:func:`gradcomp.ncnet.plan`).
        engine: ``"vmap"`` or ``"loop"``.
        device: torch device.
        progress: optional tqdm bar, advanced by ``config.steps`` per width.
    """
    runner = {"vmap": train, "loop": train_loop}.get(engine)
    if runner is None:
        raise ValueError(f"engine must be one of {ENGINES} here, got {engine!r}")
    config = plan.config
    dtype, dev = config.torch_dtype, torch.device(device)
    prob = problem(config)
    K = len(plan.seeds)
    R = 4 * K  # runs: setting pair major, then seed

    def runs(a: np.ndarray) -> torch.Tensor:  # one row per run, stored
        return torch.as_tensor(np.stack([a] * R), dtype=dtype, device=dev)

    def shared(a: np.ndarray) -> torch.Tensor:  # one row per run, a broadcast view
        return torch.tensor(a, dtype=dtype, device=dev).expand(R, *a.shape)

    data = {
        "y": torch.as_tensor(np.repeat(plan.targets, K, axis=0), dtype=dtype, device=dev),
        "w": runs(plan.weights),
        "train": runs(plan.train),
        "held": runs(plan.held),
        "x": shared(plan.patterns),
    }
    per_width = []
    for inits, mask in zip(plan.inits, plan.head_masks, strict=True):
        params = {
            k: torch.as_tensor(np.concatenate([inits[k]] * 4), dtype=dtype, device=dev)
            for k in PARAMS
        }
        _, tr = runner(
            prob,
            params,
            {**data, "mask": shared(mask)},
            steps=config.steps,
            lr=config.lr,
            trace_steps=list(plan.trace_steps),
            units=config.units,
        )
        per_width.append(tr)
        if progress is not None:
            progress.update(config.steps)
    out: dict[str, np.ndarray] = {}
    max_units = max(plan.units)
    for name in per_width[0]:
        arrs = []
        for tr in per_width:
            a = tr[name].cpu().numpy()  # (T, 4K, ...) or gram (T, 4K, L, ...)
            if name in ("gram", "unit_gram"):
                a = a[:, :, 0]  # layer "hidden" (== "all" for NCnet)
            a = a.reshape(a.shape[0], 4, K, *a.shape[2:])
            if name == "unit_gram":  # NaN-pad the unit axis to the largest width
                full = np.full((*a.shape[:3], max_units, *a.shape[4:]), np.nan)
                full[:, :, :, : a.shape[3]] = a
                a = full
            arrs.append(a)
        out[name] = np.stack(arrs, axis=1)
    solved = out.pop("outcome").astype(np.float32)
    out["diverged"] = out["diverged"].astype(bool)
    out["outcome"] = np.where(out["diverged"][..., None], np.float32(np.nan), solved)
    return out
