"""Which strategy records a step, and running it (``docs/record.md``, "Strategies" and "auto").

:class:`StrategyChoice` turns a :class:`~gradcomp.recorder.core.Recorder`'s ``strategy`` into the
strategy of each recorded step (``"auto"``'s cost model; ``"rows"`` replaced where it cannot
apply; ``"features"`` falling back to ``"loop"`` under ``"auto"``), owns the ``"rows"`` hooks
(installs them, arms them before scheduled steps, removes them) and runs the chosen strategy:
the stacked per-task gradients ``[T, *param.shape]`` of :mod:`.loop`, :mod:`.batched` or
:mod:`.features`, or the Gram statistics of :mod:`.rows_step`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from gradcomp.recorder import rows as rows_mod
from gradcomp.recorder._graph import reachable_leaves
from gradcomp.recorder.batched import batched
from gradcomp.recorder.compiled import compiled_error
from gradcomp.recorder.features import FeaturesNotApplicable, as_features, features
from gradcomp.recorder.loop import loop
from gradcomp.recorder.rows import hookable, rows_stats
from gradcomp.recorder.shared import Layout
from gradcomp.recorder.stats import ParamStats
from gradcomp.schedule import Schedule

__all__ = ["STRATEGIES", "StrategyChoice"]

STRATEGIES = ("auto", "loop", "batched", "features", "rows")


class StrategyChoice:
    """The strategy of each recorded step of one recorder, its ``"rows"`` hooks and its caches.

    Args:
        model: the recorded model.
        weights: task -> loss weight w_t, in task order.
        strategy: the recorder's ``strategy`` (one of :data:`STRATEGIES`).
        reduce: the recorder's ``reduce`` (``"rows"`` applies only without it).
        store: the recorder's ``store`` (``"rows"`` applies only with ``"stats"``).
        units: also compute ``unit_gram`` (passed to :func:`.rows_step.rows_stats`).
        schedule: the recorder's schedule; the hooks capture a forward only before a scheduled
            step.
        ddp: the model contains a ``DistributedDataParallel``: the strategies then leave ``.grad``
            alone and the recorder runs a real backward.
    """

    def __init__(
        self,
        model: nn.Module,
        weights: Mapping[str, float],
        strategy: str,
        *,
        reduce: object,
        store: str,
        units: bool,
        schedule: Schedule,
        ddp: bool,
    ) -> None:
        self.model = model
        self.tasks = list(weights)
        self.strategy = strategy
        self.units = units
        self._schedule = schedule
        self._ddp = ddp
        self.rows_allowed = reduce is None and store == "stats" and all(weights.values())
        self.hooks: rows_mod.RowsHooks | None = None
        self._features_checked = False
        self._extra_leaves: list[Tensor] | None = None
        self._params: list[Tensor] | None = None
        self._hookable: dict[int, str] | None = None
        self.rows_verified = False  # rows= checked against the graph on a first "rows" step

    # -- hooks --------------------------------------------------------------------------------
    def enter(self, layout: Layout | None, step: int) -> None:
        """On entering the recorder: install the hooks for ``strategy="rows"`` where it applies."""
        if self.strategy == "rows" and self.rows_allowed:
            self.install_rows_hooks(layout, step)

    def install_rows_hooks(self, layout: Layout | None, step: int) -> None:
        """Hook the shared modules (every supported module while ``layout`` is unknown)."""
        if layout is not None:
            mods = sorted({o for o in layout.owners})
        else:
            mods = [n for n, m in self.model.named_modules() if rows_mod.supported(m)]
        mods = [m for m in mods if rows_mod.supported(self.model.get_submodule(m))]
        self.hooks = rows_mod.RowsHooks(self.model, mods)
        self.hooks.keep = not self.rows_verified
        self.hooks.install()
        self.arm(step)

    def restrict(self, layout: Layout) -> None:
        """Once the shared parameters are known, let the hooks capture only their owners."""
        if self.hooks is not None:
            self.hooks.only = set(layout.owners)

    def arm(self, step: int) -> None:
        """Capture activations in the next forward only if ``step`` (the next one) is scheduled."""
        if self.hooks is not None:
            self.hooks.armed = bool(self._schedule(step))

    def remove_hooks(self) -> None:
        """Remove the hooks (on leaving the recorder, also after an exception)."""
        if self.hooks is not None:
            self.hooks.remove()
            self.hooks = None

    # -- choice -------------------------------------------------------------------------------
    def choose(
        self,
        features: Any,
        rows: Any,
        device: torch.device,
        *,
        layout: Layout | None,
        compiled: bool,
        step: int,
    ) -> str:
        """The strategy of this recorded step (``step`` is the next one, for arming hooks)."""
        if self.strategy == "rows" and rows is None:
            raise ValueError("strategy='rows' needs backward(losses, rows={task: batch rows})")
        if self.strategy == "features" and features is None:
            raise ValueError("strategy='features' needs backward(losses, features=trunk_output)")
        wanted = self.strategy
        if wanted == "auto":
            return self._auto(features, rows, device, layout, compiled, step)
        if wanted == "rows" and not self.rows_allowed:
            return "features" if features is not None else "batched"
        return wanted

    def _auto(
        self,
        features: Any,
        rows: Any,
        device: torch.device,
        layout: Layout | None,
        compiled: bool,
        step: int,
    ) -> str:
        """The fastest exact strategy that applies (see ``docs/record.md``, "auto").

        Costs in reverse passes of the shared trunk: ``loop`` T, ``batched``/``features`` one
        vmapped pass of T cotangents (on a GPU about 1.4x / 2.6x a plain step at T = 4 / 8 against
        2.3x / 5.6x for the loop; on one CPU thread no faster than the loop), ``rows`` one
        ordinary pass plus the Gram reduction (below the loop from T = 2 on one CPU thread:
        ``benchmarks/record_overhead.py``). So: ``rows`` from T = 2 when ``rows=`` is given; on
        CUDA from T = 4 the vmapped pass (``features`` if given, else ``batched``); otherwise
        ``loop``.
        """
        n_tasks = len(self.tasks)
        if compiled:  # the only strategy every torch.compile backend runs
            return "loop"
        if rows is not None and self.rows_allowed and n_tasks >= 2:
            if self.hooks is not None:
                return "rows"
            # this step's forward ran without hooks: "rows" from the next step
            self.install_rows_hooks(layout, step)
        if device.type == "cuda" and n_tasks >= 4:
            return "features" if features is not None else "batched"
        return "loop"

    # -- running ------------------------------------------------------------------------------
    def stacks(
        self,
        strategy: str,
        ordered: list[Tensor],
        weights: list[float],
        feats: Any,
        *,
        layout: Layout,
        compiled: bool,
        train: bool = True,
    ) -> tuple[str, list[Tensor], Tensor | None]:
        """Run ``strategy`` (not ``"rows"``): the strategy that ran, the per-task stacks and,
        for ``"features"``, the Gram ``[T, T]`` of the per-task gradients at the features
        (:func:`.features.rep_gram`; ``None`` otherwise) (``train=False``: ``.grad`` untouched,
        graph kept)."""
        train = train and not self._ddp
        leaves = self._leaves(ordered)
        if compiled and strategy in ("batched", "features"):
            try:
                return self._strategy_stacks(
                    strategy, ordered, weights, feats, layout, leaves, train
                )
            except RuntimeError as err:  # e.g. inductor: "... Tensor that doesn't have storage"
                raise compiled_error(strategy, err) from err
        return self._strategy_stacks(strategy, ordered, weights, feats, layout, leaves, train)

    def _strategy_stacks(
        self,
        strategy: str,
        ordered: list[Tensor],
        weights: list[float],
        feats: Any,
        layout: Layout,
        leaves: list[Tensor],
        train: bool,
    ) -> tuple[str, list[Tensor], Tensor | None]:
        if strategy == "features":
            fs = as_features(feats)
            check = not self._features_checked
            try:
                out, rep = features(ordered, weights, layout, fs, leaves, train, check)
            except FeaturesNotApplicable:
                if self.strategy != "auto":
                    raise
                return "loop", loop(ordered, weights, layout, leaves, train), None
            self._features_checked = True
            return strategy, out, rep
        if strategy == "batched":
            return strategy, batched(ordered, weights, layout, leaves, train), None
        return "loop", loop(ordered, weights, layout, leaves, train), None

    def _leaves(self, ordered: list[Tensor]) -> list[Tensor]:
        """Leaves that receive the training gradient: the model's trainable parameters, plus
        leaves outside the model found by walking the graph on the first recorded step."""
        if self._params is None:
            self._params = list(self.model.parameters())
        params = [p for p in self._params if p.requires_grad]
        if self._extra_leaves is None:
            ids = {id(p) for p in params}
            self._extra_leaves = [x for x in reachable_leaves(ordered) if id(x) not in ids]
        return params + [x for x in self._extra_leaves if x.requires_grad]

    def rows_step(
        self,
        ordered: list[Tensor],
        weights: list[float],
        rows: Mapping[str, Any],
        layout: Layout,
        train: bool = True,
    ) -> ParamStats:
        """Run ``"rows"``: the Gram statistics from the hooks' captures of this step (on the
        recorder's first ``"rows"`` step, after checking ``rows=`` against the graph)."""
        assert self.hooks is not None
        if self._hookable is None:
            self._hookable = hookable(self.model, layout)
        verify = not self.rows_verified
        stats = rows_stats(
            self.hooks, layout, self._hookable, self.tasks, ordered, weights, rows, self.units,
            verify=verify, train=train,
        )  # fmt: skip
        if verify:
            self.rows_verified = True
            self.hooks.keep = False
        return stats
