"""Keep the recorded steps and turn them into the labelled ``xarray.Dataset`` of the data model."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from gradcomp._dims import LAYER, STEP, TASK, TASK_J, UNIT, annotate
from gradcomp._provenance import provenance
from gradcomp.recorder.shared import Layout

__all__ = ["STEP_VARIABLES", "Arrays", "Steps", "build_dataset", "cosine_from_gram"]

_PARAM = "param"
_LABELS = {
    TASK: ("task", "1"),
    TASK_J: ("task (second axis)", "1"),
    LAYER: ("shared layer", "1"),
}


#: ``step``, ``loss``, ``gram`` and where recorded ``unit_gram`` and ``grad``, step first
Arrays = dict[str, np.ndarray]

#: the variables (and the coordinate) that have a ``step`` dimension
STEP_VARIABLES = (STEP, "loss", "gram", "unit_gram", "grad")


def cosine_from_gram(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Norms and cosines from Gram matrices over the last two axes.

    ``grad_norm_t = √gram_tt``; ``cosine_ts = gram_ts / (‖g_t‖ ‖g_s‖)``, clipped to [−1, 1], NaN
    where a norm is 0.

    Args:
        gram: ``[..., T, T]``.

    Returns:
        ``(grad_norm [..., T], cosine [..., T, T])``.
    """
    diag = np.diagonal(gram, axis1=-2, axis2=-1)
    norm = np.sqrt(np.clip(diag, 0.0, None))
    denom = norm[..., :, None] * norm[..., None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.where(denom > 0, gram / np.where(denom > 0, denom, 1.0), np.nan)
    return norm, np.clip(cos, -1.0, 1.0)


class Steps:
    """Recorded steps not yet flushed, kept on the device until read (no synchronisation per
    statistic), then on the host as float64 arrays."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self._pending: list[tuple[Tensor, Tensor, Tensor | None, Tensor | None]] = []
        self._host: list[tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]] = []

    def __len__(self) -> int:
        return len(self.steps)

    def add(
        self, step: int, loss: Tensor, gram: Tensor, unit: Tensor | None, full: Tensor | None
    ) -> None:
        """Append one step: losses ``[T]``, ``gram [L+1, T, T]``, ``unit [L+1, U, T, T]``, ``full``
        per-task flat gradients ``[T, N]`` (already on the CPU)."""
        self.steps.append(int(step))
        self._pending.append((loss, gram.detach(), unit, full))
        if len(self._pending) >= 256:
            self._sync()

    def clear(self) -> None:
        """Forget every step held (after they were flushed to a file)."""
        self.steps.clear()
        self._pending.clear()
        self._host.clear()

    def nbytes(self) -> int:
        """Bytes of the statistics held: ``8 × (1 + T + (L+1)·T² [+ (L+1)·U·T²] [+ T·N])`` per
        step (the step number, ``loss``, ``gram``, ``unit_gram``, ``grad``; all float64 on the
        host once synchronised)."""
        self._sync()
        n = 8 * len(self.steps)
        for item in self._host:
            n += sum(x.nbytes for x in item if x is not None)
        return n

    def _sync(self) -> None:
        def host(x: Tensor | None) -> np.ndarray | None:
            return None if x is None else x.detach().to("cpu", torch.float64).numpy()

        for item in self._pending:
            loss, gram, unit, full = (host(x) for x in item)
            assert loss is not None and gram is not None
            self._host.append((loss, gram, unit, full))
        self._pending.clear()

    def arrays(self, tasks: Sequence[str], layout: Layout, config: Mapping[str, Any]) -> Arrays:
        """The held steps as stacked arrays (empty ``[0, ...]`` arrays when none are held)."""
        self._sync()
        t = len(tasks)
        n_layers = len(layout.layers) + 1
        out: Arrays = {STEP: np.asarray(self.steps, dtype=np.int64)}
        h = self._host
        out["loss"] = np.stack([x[0] for x in h]) if h else np.zeros((0, t))
        out["gram"] = np.stack([x[1] for x in h]) if h else np.zeros((0, n_layers, t, t))
        if config.get("units"):
            n_units = max(max(layout.layer_units, default=0), 1)
            units = [x[2] for x in h]
            out["unit_gram"] = (
                np.stack(units) if h else np.zeros((0, n_layers, n_units, t, t))  # type: ignore[arg-type]
            )
        if config.get("store") == "full":
            n = sum(int(p.numel()) for p in layout.params)
            fulls = [x[3] for x in h]
            out["grad"] = np.stack(fulls) if h else np.zeros((0, t, n))  # type: ignore[arg-type]
        return out

    def to_dataset(
        self,
        tasks: Sequence[str],
        layout: Layout,
        config: Mapping[str, Any],
        before: Arrays | None = None,
    ) -> xr.Dataset:
        """The Dataset of the held steps, after the steps ``before`` (arrays as :meth:`arrays`
        gives, e.g. read back from the file flushed steps went to); see ``docs/data-model.md``,
        "Recording"."""
        arrays = self.arrays(tasks, layout, config)
        if before is not None:
            arrays = {k: np.concatenate([before[k], v]) for k, v in arrays.items()}
        return build_dataset(arrays, tasks, layout, config)


def build_dataset(
    arrays: Arrays, tasks: Sequence[str], layout: Layout, config: Mapping[str, Any]
) -> xr.Dataset:
    """The recording's Dataset from its stacked arrays; ``grad_norm`` and ``cosine`` from
    ``gram`` (:func:`cosine_from_gram`)."""
    gram = arrays["gram"]
    norm, cos = cosine_from_gram(gram)
    pair = (STEP, LAYER, TASK, TASK_J)
    data: dict[str, Any] = {
        "loss": ((STEP, TASK), arrays["loss"]),
        "gram": (pair, gram),
        "grad_norm": ((STEP, LAYER, TASK), norm),
        "cosine": (pair, cos),
    }
    coords: dict[str, Any] = {
        STEP: arrays[STEP],
        TASK: list(tasks),
        TASK_J: list(tasks),
        LAYER: layout.layer_coord,
    }
    if config.get("units"):
        unit = arrays["unit_gram"]
        data["unit_gram"] = ((STEP, LAYER, UNIT, TASK, TASK_J), unit)
        coords[UNIT] = np.arange(unit.shape[2], dtype=np.int64)
    if config.get("store") == "full":
        data["grad"] = ((STEP, TASK, _PARAM), arrays["grad"])
    ds = xr.Dataset(data, coords=coords)
    annotate(ds, _LABELS)
    ds.attrs.update(provenance(config))
    ds.attrs["strategy"] = str(config.get("strategy", ""))
    ds.attrs["schedule"] = str(config.get("schedule", ""))
    ds.attrs["shared_parameters"] = json.dumps(list(layout.names))
    ds.attrs["layer_members"] = json.dumps(
        {
            k: [layout.names[i] for i in idx]
            for k, idx in zip(layout.layers, layout.members, strict=True)
        }
    )
    if config.get("store") == "full":
        ds.attrs["param_shapes"] = json.dumps([list(p.shape) for p in layout.params])
    return ds
