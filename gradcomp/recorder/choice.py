"""Which strategy records a step, and running it (``docs/record.md``, "Strategies" and "auto").

:class:`StrategyChoice` turns a recorder's :class:`~gradcomp.recorder.config.RecordConfig` into
the strategy of each recorded step: it builds the step's
:class:`~gradcomp.recorder.strategy.StepContext`, asks :func:`~gradcomp.recorder.strategy.auto`
under ``"auto"``, replaces an explicitly chosen strategy that does not apply, keeps one instance
of each strategy it runs (registry: :mod:`.strategy`), drives their hooks (install, arm before
scheduled steps, remove) and runs the chosen one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from gradcomp.recorder._graph import reachable_leaves
from gradcomp.recorder.config import RecordConfig
from gradcomp.recorder.shared import Layout
from gradcomp.recorder.strategy import (
    StepContext,
    StepInputs,
    StepResult,
    Strategy,
    auto,
    get_strategy,
    wants_rows_hooks,
)

__all__ = ["STRATEGIES", "StrategyChoice"]

#: the built-in choices (``record(strategy=...)`` also takes any registered strategy)
STRATEGIES = ("auto", "loop", "batched", "features", "rows")


class StrategyChoice:
    """The strategy of each recorded step of one recorder, its strategies' hooks and caches.

    Args:
        model: the recorded model.
        config: the recorder's configuration (``strategy``, ``reduce``, ``store``, ``units``,
            task weights and schedule are read from it).
        ddp: the model contains a ``DistributedDataParallel``: the strategies then leave ``.grad``
            alone and the recorder runs a real backward.
    """

    def __init__(self, model: nn.Module, config: RecordConfig, *, ddp: bool) -> None:
        self.model = model
        self.config = config
        self.tasks = config.task_names
        self._ddp = ddp
        self.rows_allowed = (
            config.reduce is None and config.store == "stats" and all(config.weights.values())
        )
        self._instances: dict[str, Strategy] = {}
        self._extra_leaves: list[Tensor] | None = None
        self._params: list[Tensor] | None = None

    @property
    def strategy(self) -> str:
        return self.config.strategy

    def instance(self, name: str) -> Strategy:
        """This recorder's instance of the strategy ``name`` (made on first use)."""
        if name not in self._instances:
            self._instances[name] = get_strategy(name)
        return self._instances[name]

    # -- hooks --------------------------------------------------------------------------------
    @property
    def hooked(self) -> bool:
        """The ``"rows"`` hooks are installed."""
        rows = self._instances.get("rows")
        return rows is not None and getattr(rows, "hooks", None) is not None

    def enter(self, layout: Layout | None, step: int) -> None:
        """On entering the recorder: install the chosen strategy's hooks, if it has any and
        applies to this recorder (given the ``backward`` arguments it needs)."""
        name = self.strategy
        if name == "auto" or not hasattr(self.instance(name), "install"):
            return
        given = StepContext(
            n_tasks=len(self.tasks), ddp=self._ddp, features=True, rows=True,
            rows_allowed=self.rows_allowed,
        )  # fmt: skip
        if self.instance(name).applies(given) is True:
            self._install(name, layout, step)

    def _install(self, name: str, layout: Layout | None, step: int) -> None:
        strategy: Any = self.instance(name)
        strategy.install(self.model, layout)
        self.arm(step)

    def restrict(self, layout: Layout) -> None:
        """Once the shared parameters are known, let the hooks capture only their owners."""
        for strategy in self._instances.values():
            if hasattr(strategy, "restrict"):
                strategy.restrict(layout)

    def arm(self, step: int) -> None:
        """Capture activations in the next forward only if ``step`` (the next one) is scheduled."""
        armable = [s for s in self._instances.values() if hasattr(s, "arm")]
        if armable:
            scheduled = bool(self.config.schedule(step))
            for strategy in armable:
                strategy.arm(scheduled)

    def remove_hooks(self) -> None:
        """Remove every hook (on leaving the recorder, also after an exception)."""
        for strategy in self._instances.values():
            if hasattr(strategy, "remove"):
                strategy.remove()

    # -- choice -------------------------------------------------------------------------------
    def context(
        self, features: Any, rows: Any, device: torch.device, *, compiled: bool
    ) -> StepContext:
        """The facts this step's choice depends on."""
        return StepContext(
            n_tasks=len(self.tasks),
            device=device.type,
            compiled=compiled,
            ddp=self._ddp,
            features=features is not None,
            rows=rows is not None,
            rows_allowed=self.rows_allowed,
            rows_hooked=self.hooked,
        )

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
        wanted = self.strategy
        given = {"features": features, "rows": rows}
        if wanted != "auto":
            for arg, usage in self.instance(wanted).needs.items():
                if given.get(arg) is None:
                    raise ValueError(f"strategy={wanted!r} needs backward(losses, {usage})")
        ctx = self.context(features, rows, device, compiled=compiled)
        if wanted == "auto":
            if wants_rows_hooks(ctx):  # this step's forward ran without hooks: rows from the next
                self._install("rows", layout, step)
            return auto(ctx)
        if self.instance(wanted).applies(ctx) is not True:
            return "features" if features is not None else "batched"
        return wanted

    # -- running ------------------------------------------------------------------------------
    def run(
        self,
        name: str,
        ordered: list[Tensor],
        weights: list[float],
        *,
        features: Any,
        rows: Mapping[str, Any] | None,
        layout: Layout,
        compiled: bool,
        train: bool = True,
    ) -> tuple[str, StepResult, bool]:
        """Run the strategy ``name``: the strategy that ran, its result, and whether the
        recorder must still run the real backward (DDP: the strategy left ``.grad`` alone)."""
        strategy = self.instance(name)
        plain = bool(getattr(strategy, "plain_backward", False))
        delegated = train and self._ddp and not plain
        step = StepInputs(
            model=self.model,
            tasks=self.tasks,
            losses=ordered,
            weights=weights,
            layout=layout,
            leaves=lambda: self._leaves(ordered),
            features=features,
            rows=rows,
            units=self.config.units,
            train=train and not delegated,
            auto=self.strategy == "auto",
            compiled=compiled,
        )
        result = strategy.compute(step)
        return result.ran or name, result, delegated

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
