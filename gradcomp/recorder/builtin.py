"""The four built-in strategies as plug-ins: ``loop``, ``batched``, ``features``, ``rows``.

Each wraps its module (:mod:`.loop`, :mod:`.batched`, :mod:`.features`, :mod:`.rows`) in the
:class:`~gradcomp.recorder.strategy.Strategy` protocol and is registered on import (the
registry imports this module on first use).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import ClassVar

from torch import nn

from gradcomp.recorder import rows as rows_mod
from gradcomp.recorder.batched import batched
from gradcomp.recorder.compiled import compiled_error
from gradcomp.recorder.features import FeaturesNotApplicable, as_features, features
from gradcomp.recorder.loop import loop
from gradcomp.recorder.shared import Layout
from gradcomp.recorder.strategy import StepContext, StepInputs, StepResult, register_strategy

__all__ = ["Batched", "Features", "Loop", "Rows"]


@contextlib.contextmanager
def _compiled_errors(name: str, compiled: bool) -> Iterator[None]:
    """Under ``torch.compile``, a vmapped pass's ``RuntimeError`` (e.g. inductor: "... Tensor
    that doesn't have storage") becomes a ``ValueError`` that names the way out."""
    if not compiled:
        yield
        return
    try:
        yield
    except RuntimeError as err:
        raise compiled_error(name, err) from err


@register_strategy
class Loop:
    """One ordinary reverse pass per task (:func:`.loop.loop`): exact everywhere."""

    name: ClassVar[str] = "loop"
    needs: ClassVar[dict[str, str]] = {}

    def applies(self, ctx: StepContext) -> bool | str:
        return True

    def compute(self, step: StepInputs) -> StepResult:
        return StepResult(
            stacks=loop(step.losses, step.weights, step.layout, step.leaves(), step.train)
        )


@register_strategy
class Batched:
    """One vmapped reverse pass with the T one-hot cotangents (:func:`.batched.batched`)."""

    name: ClassVar[str] = "batched"
    needs: ClassVar[dict[str, str]] = {}

    def applies(self, ctx: StepContext) -> bool | str:
        return True

    def compute(self, step: StepInputs) -> StepResult:
        with _compiled_errors(self.name, step.compiled):
            out = batched(step.losses, step.weights, step.layout, step.leaves(), step.train)
        return StepResult(stacks=out)


@register_strategy
class Features:
    """Heads one task at a time, then one vmapped VJP through the trunk
    (:func:`.features.features`); under ``"auto"`` falls back to ``loop`` where a loss reaches
    the trunk around ``features=``."""

    name: ClassVar[str] = "features"
    needs: ClassVar[dict[str, str]] = {"features": "features=trunk_output"}

    def __init__(self) -> None:
        self._checked = False  # features= checked against the graph on a first step

    def applies(self, ctx: StepContext) -> bool | str:
        return True if ctx.features else "it needs backward(losses, features=trunk_output)"

    def compute(self, step: StepInputs) -> StepResult:
        fs = as_features(step.features)
        leaves = step.leaves()
        try:
            with _compiled_errors(self.name, step.compiled):
                out, rep = features(
                    step.losses, step.weights, step.layout, fs, leaves, step.train,
                    not self._checked,
                )  # fmt: skip
        except FeaturesNotApplicable:
            if not step.auto:
                raise
            out = loop(step.losses, step.weights, step.layout, leaves, step.train)
            return StepResult(stacks=out, ran="loop")
        self._checked = True
        return StepResult(stacks=out, rep=rep)


@register_strategy
class Rows:
    """One ordinary backward while forward hooks reduce each hooked module's per-row
    gradients to per-task Grams (:mod:`.rows`): never materialises per-task gradients, so it
    needs ``rows=``, no ``reduce``, ``store="stats"`` and non-zero task weights."""

    name: ClassVar[str] = "rows"
    needs: ClassVar[dict[str, str]] = {"rows": "rows={task: batch rows}"}
    #: its training step is one ordinary ``backward()`` (so DDP's gradient hooks fire)
    plain_backward: ClassVar[bool] = True

    def __init__(self) -> None:
        self.hooks: rows_mod.RowsHooks | None = None
        self._hookable: dict[int, str] | None = None
        self.verified = False  # rows= checked against the graph on a first step

    def applies(self, ctx: StepContext) -> bool | str:
        if not ctx.rows_allowed:
            return "it needs no reduce=, store='stats' and non-zero task weights"
        return True if ctx.rows else "it needs backward(losses, rows={task: batch rows})"

    # -- hooks --------------------------------------------------------------------------------
    def install(self, model: nn.Module, layout: Layout | None) -> None:
        """Hook the shared modules (every supported module while ``layout`` is unknown)."""
        if layout is not None:
            mods = sorted({o for o in layout.owners})
        else:
            mods = [n for n, m in model.named_modules() if rows_mod.supported(m)]
        mods = [m for m in mods if rows_mod.supported(model.get_submodule(m))]
        self.hooks = rows_mod.RowsHooks(model, mods)
        self.hooks.keep = not self.verified
        self.hooks.install()

    def restrict(self, layout: Layout) -> None:
        """Once the shared parameters are known, capture only their owners."""
        if self.hooks is not None:
            self.hooks.only = set(layout.owners)

    def arm(self, scheduled: bool) -> None:
        """Capture activations in the next forward only if its step is scheduled."""
        if self.hooks is not None:
            self.hooks.armed = scheduled

    def remove(self) -> None:
        if self.hooks is not None:
            self.hooks.remove()
            self.hooks = None

    # -- step ---------------------------------------------------------------------------------
    def compute(self, step: StepInputs) -> StepResult:
        """The Gram statistics from the hooks' captures of this step (on the first step, after
        checking ``rows=`` against the graph)."""
        assert self.hooks is not None and step.rows is not None
        if self._hookable is None:
            self._hookable = rows_mod.hookable(step.model, step.layout)
        verify = not self.verified
        stats = rows_mod.rows_stats(
            self.hooks, step.layout, self._hookable, list(step.tasks), step.losses, step.weights,
            step.rows, step.units, verify=verify, train=step.train,
        )  # fmt: skip
        if verify:
            self.verified = True
            self.hooks.keep = False
        return StepResult(stats=stats)
