"""NCnet through the generic ensemble trainer: the engines ``method="vmap"`` and ``"loop"``.

Production paths of :func:`gradcomp.ncnet.run` (any model written as a
:class:`gradcomp.ensemble.Problem` trains this way); the tests check them, like the fast path,
against the independent :func:`gradcomp.reference.ncnet.train_ncnet`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from gradcomp.ensemble import train, train_loop
from gradcomp.ncnet._config import NCnetConfig
from gradcomp.ncnet._fast import SETTING_PAIRS
from gradcomp.ncnet._model import head_mask, init_params, problem, run_data

__all__ = ["train_generic"]


def train_generic(
    config: NCnetConfig,
    widths: Sequence[int],
    seeds: Sequence[int],
    *,
    method: str = "vmap",
    device: str | torch.device = "cpu",
    progress=None,
) -> dict[str, np.ndarray]:
    """Same output as :func:`gradcomp.ncnet._fast.train_fast`, through autograd.

    Args:
        method: ``"vmap"`` (:func:`gradcomp.ensemble.train`, one width at a time, the four
            setting pairs and all seeds in one vmap) or ``"loop"`` (:func:`train_loop`, one run at
            a time).
    """
    runner = {"vmap": train, "loop": train_loop}.get(method)
    if runner is None:
        raise ValueError(f"method must be 'vmap' or 'loop', got {method!r}")
    dtype, dev = config.torch_dtype, torch.device(device)
    prob = problem(config)
    x = config.patterns()
    per_width = []
    for n in widths:
        inits = [init_params(config, n, s) for s in seeds]
        params = {
            k: torch.as_tensor(np.stack([p[k] for p in inits] * 4), dtype=dtype, device=dev)
            for k in inits[0]
        }
        runs = [run_data(config, a, b) for a, b in SETTING_PAIRS for _ in seeds]
        data = {
            k: torch.as_tensor(np.stack([r[k] for r in runs]), dtype=dtype, device=dev)
            for k in runs[0]
        }
        data["x"] = torch.as_tensor(x, dtype=dtype, device=dev).expand(len(runs), *x.shape)
        mask = head_mask(config, n)
        data["mask"] = torch.as_tensor(mask, dtype=dtype, device=dev).expand(len(runs), *mask.shape)
        _, tr = runner(
            prob,
            params,
            data,
            steps=config.steps,
            lr=config.lr,
            trace_steps=config.trace_steps(),
            units=config.units,
        )
        per_width.append(tr)
        if progress is not None:
            progress.update(config.steps)
    out: dict[str, np.ndarray] = {}
    K = len(seeds)
    max_units = max(2 * w if config.unshared else w for w in widths)
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
