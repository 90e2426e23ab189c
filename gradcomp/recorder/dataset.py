"""Keep the recorded steps and turn them into the labelled ``xarray.Dataset`` of the data model."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from gradcomp.dims import LAYER, STEP, TASK, TASK_J
from gradcomp.gram import gram_dataset
from gradcomp.provenance import provenance
from gradcomp.recorder.shared import Layout

__all__ = [
    "STEP_VARIABLES",
    "Arrays",
    "Steps",
    "build_dataset",
    "records_rep_gram",
]

_PARAM = "param"
_LABELS = {
    TASK: ("task", "1"),
    TASK_J: ("task (second axis)", "1"),
    LAYER: ("shared layer", "1"),
    "rep_gram": (
        "inner product of per-task loss gradients at the shared representation, summed over rows",
        "1",
    ),
}


#: ``step``, ``loss``, ``gram`` and where recorded ``unit_gram``, ``grad`` and ``rep_gram``, step
#: first
Arrays = dict[str, np.ndarray]

#: steps per host block (and the most kept on the device before moving them to the host)
_BLOCK = 256

#: the variables (and the coordinate) that have a ``step`` dimension
STEP_VARIABLES = (STEP, "loss", "gram", "unit_gram", "grad", "rep_gram")

_COLUMNS = ("loss", "gram", "unit_gram", "grad", "rep_gram")


def records_rep_gram(config: Mapping[str, Any]) -> bool:
    """Whether a recorder with this config records ``rep_gram``: with ``strategy="features"``
    (every recorded step then runs it) and no ``reduce`` (which would make the parameter Grams
    describe another batch than the representation's)."""
    return config.get("strategy") == "features" and not config.get("reduce")


class Steps:
    """Recorded steps not yet flushed: kept on the device until read or 256 have accumulated (no
    synchronisation per statistic), then on the host as stacked float64 blocks (one array per
    variable for up to :data:`_BLOCK` steps, so memory is the statistics' size)."""

    def __init__(self) -> None:
        self._pending: list[
            tuple[int, Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]
        ] = []
        self._blocks: list[Arrays] = []
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def add(
        self,
        step: int,
        loss: Tensor,
        gram: Tensor,
        unit: Tensor | None,
        full: Tensor | None,
        rep: Tensor | None = None,
    ) -> None:
        """Append one step: losses ``[T]``, ``gram [L+1, T, T]``, ``unit [L+1, U, T, T]``, ``full``
        per-task flat gradients ``[T, N]`` (already on the CPU), ``rep`` the Gram ``[T, T]`` at
        the shared representation."""
        rep = None if rep is None else rep.detach()
        self._pending.append((int(step), loss, gram.detach(), unit, full, rep))
        self._n += 1
        if len(self._pending) >= _BLOCK:
            self._sync()

    def clear(self) -> None:
        """Forget every step held (after they were flushed to a file)."""
        self._pending.clear()
        self._blocks.clear()
        self._n = 0

    def nbytes(self) -> int:
        """Bytes of the statistics held: ``8 × (1 + T + (L+1)·T² [+ (L+1)·U·T²] [+ T·N])`` per
        step (the step number, ``loss``, ``gram``, ``unit_gram``, ``grad``, as float64 on the
        host; steps still on the device are counted at that size), plus ``8 × T²`` with
        ``rep_gram``."""
        n = sum(a.nbytes for block in self._blocks for a in block.values())
        for _, *xs in self._pending:
            n += 8 * (1 + sum(x.numel() for x in xs if x is not None))
        return n

    def _sync(self) -> None:
        if not self._pending:
            return
        steps, *columns = zip(*self._pending, strict=True)
        block: Arrays = {STEP: np.asarray(steps, dtype=np.int64)}
        for name, xs in zip(_COLUMNS, columns, strict=True):
            if xs[0] is not None:  # one stack and one copy to the host per variable
                stacked = torch.stack([x.detach().to(torch.float64) for x in xs])
                block[name] = stacked.cpu().numpy()
        self._pending.clear()
        last = self._blocks[-1] if self._blocks else None
        if last is not None and len(last[STEP]) < _BLOCK:  # merge small blocks (after reads)
            block = {k: np.concatenate([last[k], v]) for k, v in block.items()}
            self._blocks[-1] = block
        else:
            self._blocks.append(block)

    def arrays(self, tasks: Sequence[str], layout: Layout, config: Mapping[str, Any]) -> Arrays:
        """The held steps as stacked arrays (empty ``[0, ...]`` arrays when none are held)."""
        self._sync()
        t = len(tasks)
        n_layers = len(layout.layers) + 1
        n_units = max(max(layout.layer_units, default=0), 1)
        n_params = sum(int(p.numel()) for p in layout.params)
        empty = {
            STEP: np.zeros(0, dtype=np.int64),
            "loss": np.zeros((0, t)),
            "gram": np.zeros((0, n_layers, t, t)),
            "unit_gram": np.zeros((0, n_layers, n_units, t, t)),
            "grad": np.zeros((0, t, n_params)),
            "rep_gram": np.zeros((0, t, t)),
        }
        names = [STEP, "loss", "gram"]
        names += ["unit_gram"] if config.get("units") else []
        names += ["grad"] if config.get("store") == "full" else []
        names += ["rep_gram"] if records_rep_gram(config) else []
        return {
            k: np.concatenate([b[k] for b in self._blocks]) if self._blocks else empty[k]
            for k in names
        }

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
    """The recording's Dataset from its stacked arrays (:func:`gradcomp.gram.gram_dataset`:
    ``grad_norm`` and ``cosine`` from ``gram``)."""
    data: dict[str, Any] = {"loss": ((STEP, TASK), arrays["loss"])}
    if config.get("store") == "full":
        data["grad"] = ((STEP, TASK, _PARAM), arrays["grad"])
    if "rep_gram" in arrays:
        data["rep_gram"] = ((STEP, TASK, TASK_J), arrays["rep_gram"])
    ds = gram_dataset(
        arrays["gram"],
        (STEP,),
        {STEP: arrays[STEP]},
        tasks=tasks,
        layers=layout.layer_coord,
        units=arrays["unit_gram"] if config.get("units") else None,
        data=data,
        labels=_LABELS,
    )
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
