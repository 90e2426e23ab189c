"""Strategies as plug-ins: the :class:`Strategy` protocol, its registry and ``"auto"``.

A strategy computes one recorded step's per-task statistics of the shared parameters. It is a
class with

- ``name`` (what ``record(strategy=...)`` takes) and ``needs`` (``backward`` arguments it
  requires, name -> how to pass it, e.g. ``{"rows": "rows={task: batch rows}"}``);
- ``applies(ctx) -> True | str``: whether it can run for this recorder and step
  (:class:`StepContext`), else the reason; an explicitly chosen strategy that does not apply is
  replaced by ``"features"`` (when ``features=`` is given) or ``"batched"``;
- ``compute(step) -> StepResult``: from the step's losses (:class:`StepInputs`) either the
  stacked per-task gradients ``[T, *param.shape]`` of each shared parameter (reduced to Grams by
  the recorder, after ``reduce``) or the Gram statistics themselves
  (:class:`~gradcomp.recorder.stats.ParamStats`); with ``step.train`` it also leaves
  ``Σ_t w_t ∂L_t/∂θ`` in every ``.grad``;
- optionally ``plain_backward = True`` when its training step is one ordinary ``backward()``
  (else, under ``DistributedDataParallel``, the recorder calls it with ``train=False`` and runs
  the real backward itself, so DDP's gradient hooks fire);
- optionally ``install(model, layout)``, ``restrict(layout)``, ``arm(scheduled)`` and
  ``remove()`` for forward hooks (``"rows"``).

A recorder makes its own instance of each strategy it runs (so instances may keep state across
steps, e.g. a first-step check). :func:`register_strategy` adds a class under its ``name``; the
built-ins (``loop``, ``batched``, ``features``, ``rows``, :mod:`.builtin`) are registered on
first use of the registry. :func:`auto` is the cost model behind ``strategy="auto"``: a pure
function of the :class:`StepContext`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

from torch import Tensor, nn

from gradcomp.recorder.shared import Layout

__all__ = [
    "StepContext",
    "StepInputs",
    "StepResult",
    "Strategy",
    "auto",
    "get_strategy",
    "register_strategy",
    "strategies",
    "strategy_names",
    "unregister_strategy",
]


@dataclasses.dataclass(frozen=True)
class StepContext:
    """What the choice of a recorded step's strategy may depend on (nothing else).

    Attributes:
        n_tasks: the number T of tasks.
        device: the losses' device type (``"cpu"``, ``"cuda"``, ...).
        compiled: the model (or the step's graph) is ``torch.compile``'d.
        ddp: the model contains a ``DistributedDataParallel``.
        features: ``backward`` got ``features=``.
        rows: ``backward`` got ``rows=``.
        rows_allowed: the recorder's options let ``"rows"`` run (no ``reduce``,
            ``store="stats"``, every task weight non-zero).
        rows_hooked: the ``"rows"`` hooks were in place for this step's forward.
    """

    n_tasks: int
    device: str = "cpu"
    compiled: bool = False
    ddp: bool = False
    features: bool = False
    rows: bool = False
    rows_allowed: bool = True
    rows_hooked: bool = False


@dataclasses.dataclass(frozen=True)
class StepInputs:
    """One recorded step, as a strategy's :meth:`Strategy.compute` sees it.

    Attributes:
        model: the recorded model.
        tasks: task names, in order.
        losses: the T scalar task losses, in task order.
        weights: their loss weights w_t.
        layout: the shared parameters.
        leaves: ``() ->`` every leaf that receives the training gradient (the model's trainable
            parameters and leaves outside it reached by the losses).
        features: ``backward``'s ``features=`` (or ``None``).
        rows: ``backward``'s ``rows=`` (or ``None``).
        units: also compute per-unit Grams (``record(units=True)``).
        train: write the training gradient into ``.grad`` (``False``: leave ``.grad`` alone and
            keep the graph: ``Recorder.observe``, or a DDP model whose backward the recorder runs).
        auto: the recorder's strategy is ``"auto"`` (a strategy may then fall back).
        compiled: the model is ``torch.compile``'d.
    """

    model: nn.Module
    tasks: Sequence[str]
    losses: Sequence[Tensor]
    weights: Sequence[float]
    layout: Layout
    leaves: Callable[[], list[Tensor]]
    features: Any = None
    rows: Mapping[str, Any] | None = None
    units: bool = False
    train: bool = True
    auto: bool = False
    compiled: bool = False


@dataclasses.dataclass(frozen=True)
class StepResult:
    """What a strategy computed: exactly one of ``stacks`` and ``stats``.

    Attributes:
        stacks: ``[T, *param.shape]`` per shared parameter, in ``layout.params`` order.
        stats: the per-parameter Gram statistics (``ParamStats``), for strategies that never
            materialise per-task gradients.
        rep: the Gram ``[T, T]`` of the per-task gradients at ``features=`` (``"features"``).
        ran: the strategy that actually ran, when it fell back to another (else ``None``).
    """

    stacks: list[Tensor] | None = None
    stats: Any = None
    rep: Tensor | None = None
    ran: str | None = None

    def __post_init__(self) -> None:
        if (self.stacks is None) == (self.stats is None):
            raise ValueError("a StepResult holds exactly one of stacks= and stats=")


@runtime_checkable
class Strategy(Protocol):
    """A recording strategy (see the module docstring); optional hook methods: ``install``,
    ``restrict``, ``arm``, ``remove``."""

    name: ClassVar[str]
    needs: ClassVar[Mapping[str, str]]

    def applies(self, ctx: StepContext) -> bool | str:
        """``True`` if it can run for ``ctx``, else the reason it cannot."""
        ...

    def compute(self, step: StepInputs) -> StepResult:
        """The step's per-task stacks or Gram statistics (and ``.grad`` when ``step.train``)."""
        ...


_REGISTRY: dict[str, Callable[[], Strategy]] = {}
_BUILTINS_LOADED = False


def _load_builtins() -> None:
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        import gradcomp.recorder.builtin  # noqa: F401  (registers loop, batched, features, rows)


def register_strategy(cls: type[Any]) -> type[Any]:
    """Register the strategy class ``cls`` under ``cls.name`` (usable as a class decorator).

    Raises:
        ValueError: the name is ``"auto"``, empty, or already registered.
        TypeError: ``cls`` lacks ``name``, ``needs``, ``applies`` or ``compute``.
    """
    _load_builtins()
    missing = [a for a in ("name", "needs", "applies", "compute") if not hasattr(cls, a)]
    if missing:
        raise TypeError(f"a strategy needs {missing}; see gradcomp.recorder.strategy.Strategy")
    name = cls.name
    if not isinstance(name, str) or not name or name == "auto":
        raise ValueError(f"a strategy's name must be a non-empty string, not 'auto'; got {name!r}")
    if name in _REGISTRY:
        raise ValueError(f"strategy {name!r} is already registered")
    _REGISTRY[name] = cls
    return cls


def unregister_strategy(name: str) -> None:
    """Remove a registered strategy (e.g. a test's own)."""
    _load_builtins()
    if name not in _REGISTRY:
        raise ValueError(f"no strategy {name!r} is registered")
    del _REGISTRY[name]


def strategies() -> Mapping[str, Callable[[], Strategy]]:
    """The registered strategies: name -> class (a read-only view, in registration order)."""
    _load_builtins()
    return dict(_REGISTRY)


def strategy_names() -> tuple[str, ...]:
    """The registered strategies' names, in registration order."""
    return tuple(strategies())


def get_strategy(name: str) -> Strategy:
    """A new instance of the strategy registered as ``name``."""
    found = strategies().get(name)
    if found is None:
        raise ValueError(f"strategy must be one of {('auto', *strategy_names())}, got {name!r}")
    return found()


def auto(ctx: StepContext) -> str:
    """The fastest exact strategy for ``ctx`` (``strategy="auto"``; ``docs/record.md``, "auto").

    Costs in reverse passes of the shared trunk: ``loop`` T, ``batched``/``features`` one vmapped
    pass of T cotangents (on a GPU about 1.4x / 2.6x a plain step at T = 4 / 8 against 2.3x / 5.6x
    for the loop; on one CPU thread no faster than the loop), ``rows`` one ordinary pass plus the
    Gram reduction (below the loop from T = 2 on one CPU thread:
    ``benchmarks/record_overhead.py``). So: under ``torch.compile`` ``loop`` (the only strategy
    every backend runs); ``rows`` from T = 2 when ``rows=`` is given, it is allowed and its hooks
    saw this step's forward; on CUDA from T = 4 the vmapped pass (``features`` if given, else
    ``batched``); otherwise ``loop``.
    """
    if ctx.compiled:
        return "loop"
    if ctx.rows and ctx.rows_allowed and ctx.n_tasks >= 2 and ctx.rows_hooked:
        return "rows"
    if ctx.device == "cuda" and ctx.n_tasks >= 4:
        return "features" if ctx.features else "batched"
    return "loop"


def wants_rows_hooks(ctx: StepContext) -> bool:
    """Under ``"auto"``: ``rows`` would run but its hooks missed this step's forward, so install
    them now and take ``rows`` from the next step."""
    return (
        not ctx.compiled
        and ctx.rows
        and ctx.rows_allowed
        and ctx.n_tasks >= 2
        and not ctx.rows_hooked
    )
