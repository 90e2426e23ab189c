"""The recorder under ``torch.nn.parallel.DistributedDataParallel``.

What is reduced, and how (the project's reading of "the Dataset describes the global batch"):

- **Per-task gradients.** On a recorded step each rank computes its stacked per-task gradients
  ``G_r[t] = ∂L_t^(r)/∂θ`` (``[T, *param.shape]`` per shared parameter) of its *local* mean losses.
  :func:`mean_all_reduce` all-reduces every stack with ``SUM`` and divides by the world size W:
  ``G[t] = (1/W) Σ_r G_r[t]`` — exactly the averaging DDP applies to ``.grad``. With equal local
  batch sizes and mean-reduced losses, ``G[t]`` is the gradient of task t's mean loss over the
  concatenated global batch, so ``gram``, ``grad_norm``, ``cosine`` and ``unit_gram`` are those of
  a single process on the global batch. (Gram entries are computed *after* the reduction; averaging
  per-rank Grams instead would describe per-rank batches, a different quantity.)
- **Losses.** The recorded ``loss`` of each task is the mean of the ranks' local losses (one
  all-reduce of T numbers), again the global-batch loss for equal local batch sizes. Its graph,
  and so the training gradient, is unchanged (a constant shift of the value only).
- **Training gradients** are DDP's own: the recorder runs a real ``backward()`` of Σ_t w_t L_t, so
  DDP's bucketed all-reduce fills ``.grad`` as it would without recording.
- **Cost.** On recorded steps only: T gradient-sized all-reduces (one per task, i.e. T× the data
  of DDP's own all-reduce of one gradient) plus one all-reduce of T floats; unrecorded steps add
  nothing.
- **Writing.** Every rank holds the same statistics; only rank 0 gets the ``path`` and writes.

Unequal local batch sizes: DDP still averages per-rank gradients (it does not weight by batch size),
and so does this reduction, so the statistics match DDP's training gradient, not the pooled batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from os import PathLike
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from gradcomp.recorder.config import RecordConfig

__all__ = ["DDPRecorder", "ddp_config", "ddp_recorder", "mean_all_reduce", "record_ddp"]


def _group_size(group: Any) -> int:
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "torch.distributed is not initialised: call dist.init_process_group(...) first"
        )
    return dist.get_world_size(group)


def mean_all_reduce(group: Any = None) -> Callable[[Tensor], Tensor]:
    """The ``reduce=`` callable for :func:`gradcomp.record` under DDP: mean over ranks.

    ``reduce(G) = all_reduce(G, SUM) / world_size`` on a copy of the stacked per-task gradients.

    Args:
        group: the process group (default: the world), the same one DDP uses.
    """
    size = _group_size(group)

    def ddp_mean_all_reduce(stack: Tensor) -> Tensor:
        out = stack.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out.div_(size)

    return ddp_mean_all_reduce


class DDPRecorder:
    """:func:`gradcomp.record` for a DDP-wrapped model: global statistics, rank 0 writes.

    Use exactly like the recorder it wraps (``with record_ddp(...) as rec: rec.backward(...)``).
    """

    def __init__(self, recorder: Any, group: Any, rank: int):
        self.recorder = recorder
        self.group = group
        self.rank = rank
        self._size = _group_size(group)

    def __enter__(self) -> DDPRecorder:
        self.recorder.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.recorder.__exit__(*exc)

    @property
    def path(self) -> Any:
        """Where the recording is written: set on rank 0 only."""
        return self.recorder.path

    def backward(self, losses: Mapping[str, Tensor], **kwargs: Any) -> None:
        """Recorder ``backward`` with each loss's *value* replaced by its mean over ranks.

        ``L + (mean_r L.detach() − L.detach())`` has the global mean as value and the local
        graph, so ``.grad`` (and DDP's own all-reduce) is exactly as without recording.
        """
        self.recorder.backward(self._global(losses), **kwargs)

    def observe(self, losses: Mapping[str, Tensor], **kwargs: Any) -> None:
        """Recorder ``observe`` (``.grad`` untouched) with the losses' values meaned over ranks,
        as :meth:`backward`; for callbacks that record next to the trainer's own backward."""
        self.recorder.observe(self._global(losses), **kwargs)

    def _global(self, losses: Mapping[str, Tensor]) -> dict[str, Tensor]:
        names = list(losses)
        local = torch.stack([losses[n].detach().reshape(()) for n in names])
        total = local.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=self.group)
        shift = total / self._size - local
        return {n: losses[n] + shift[i] for i, n in enumerate(names)}

    def to_dataset(self) -> Any:
        """The recording (identical on every rank)."""
        return self.recorder.to_dataset()

    def flush(self, path: str | PathLike[str] | None = None) -> None:
        """Write the recording: on rank 0 only; a no-op elsewhere."""
        if self.rank == 0:
            self.recorder.flush(path)


def _check_ddp(model: nn.Module) -> None:
    if not any(isinstance(m, nn.parallel.DistributedDataParallel) for m in model.modules()):
        raise ValueError("record_ddp needs a model wrapped in DistributedDataParallel")


def ddp_config(config: RecordConfig, group: Any = None) -> RecordConfig:
    """``config`` for one rank of a DDP run: ``reduce`` the mean over ranks
    (:func:`mean_all_reduce`); the ``path`` (and ``flush_every``) kept on rank 0 only.

    Raises:
        ValueError: ``config`` already has a ``reduce``.
    """
    if config.reduce is not None:
        raise ValueError("record_ddp sets reduce= itself (mean over ranks); don't pass one")
    size = _group_size(group)
    rank = dist.get_rank(group) if size else 0
    if rank != 0:  # nothing is written (or flushed) where the path is not kept
        config = dataclasses.replace(config, path=None, flush_every=None)
    return dataclasses.replace(config, reduce=mean_all_reduce(group))


def record_ddp(
    model: nn.Module,
    tasks: Any,
    *,
    path: str | PathLike[str] | None = None,
    group: Any = None,
    **kwargs: Any,
) -> DDPRecorder:
    """``gradcomp.record`` for a model wrapped in ``DistributedDataParallel``.

    Args:
        model: the DDP-wrapped model (its ``module`` holds the parameters).
        tasks: as in :func:`gradcomp.record`.
        path: netCDF file written by rank 0 only.
        group: process group (default: the world).
        **kwargs: any other :func:`gradcomp.record` argument except ``reduce``.

    Returns:
        A :class:`DDPRecorder` (context manager).
    """
    _group_size(group)
    if "reduce" in kwargs:
        raise ValueError("record_ddp sets reduce= itself (mean over ranks); don't pass one")
    _check_ddp(model)
    return ddp_recorder(model, RecordConfig(tasks, path=path, **kwargs), group)


def ddp_recorder(model: nn.Module, config: RecordConfig, group: Any = None) -> DDPRecorder:
    """:func:`record_ddp` from a :class:`~gradcomp.recorder.config.RecordConfig` (without
    ``reduce``; see :func:`ddp_config`)."""
    from gradcomp.recorder.core import Recorder

    size = _group_size(group)
    _check_ddp(model)
    rank = dist.get_rank(group) if size else 0
    return DDPRecorder(Recorder.from_config(model, ddp_config(config, group)), group, rank)
