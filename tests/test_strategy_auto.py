"""``strategy="auto"`` as a pure function of the step context, the strategy registry, the frozen
recorder configuration and the one schedule type."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from torch import nn

import gradcomp
from gradcomp.ncnet import NCnetConfig
from gradcomp.recorder import Recorder
from gradcomp.recorder.choice import STRATEGIES
from gradcomp.recorder.config import DEFAULT_FLUSH_EVERY, RecordConfig
from gradcomp.recorder.strategy import StepContext, auto, strategy_names, wants_rows_hooks
from gradcomp.schedule import as_schedule, at, logarithmic, scheduled

C = StepContext
# (context, choice): the cost model of docs/record.md, "auto"
TABLE = [
    (C(2), "loop"),
    (C(8, features=True), "loop"),  # CPU: the vmapped pass is no faster than the loop
    (C(8, device="cuda", compiled=True, features=True), "loop"),
    (C(4, compiled=True, rows=True, rows_hooked=True), "loop"),  # compile: only the loop
    (C(2, rows=True, rows_hooked=True), "rows"),
    (C(8, device="cuda", rows=True, rows_hooked=True, features=True), "rows"),
    (C(2, rows=True), "loop"),  # hooks missed this forward: rows from the next step
    (C(4, device="cuda", rows=True, features=True), "features"),
    (C(1, rows=True, rows_hooked=True), "loop"),  # T = 1: nothing to share
    (C(2, rows=True, rows_hooked=True, rows_allowed=False), "loop"),  # reduce / store="full"
    (C(4, device="cuda", rows=True, rows_hooked=True, rows_allowed=False), "batched"),
    (C(3, device="cuda", features=True), "loop"),  # CUDA below T = 4: the loop
    (C(4, device="cuda", features=True), "features"),
    (C(4, device="cuda"), "batched"),
    (C(8, device="cuda", ddp=True), "batched"),
    (C(4, device="mps", features=True), "loop"),
]


@pytest.mark.parametrize(("ctx", "want"), TABLE)
def test_auto_table(ctx: StepContext, want: str) -> None:
    assert auto(ctx) == want
    assert auto(ctx) == want  # pure: same context, same answer, context unchanged (frozen)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.n_tasks = 3  # type: ignore[misc]


def test_auto_always_names_a_registered_strategy_and_rows_only_when_hooked() -> None:
    flags = ("compiled", "ddp", "features", "rows", "rows_allowed", "rows_hooked")
    for n, device, values in itertools.product(
        (1, 2, 4), ("cpu", "cuda"), itertools.product((False, True), repeat=len(flags))
    ):
        ctx = StepContext(n, device, **dict(zip(flags, values, strict=True)))
        got = auto(ctx)
        assert got in strategy_names()
        assert got != "features" or ctx.features
        assert got != "rows" or (ctx.rows and ctx.rows_allowed and ctx.rows_hooked)
        # hooks are wanted exactly where rows would run but for them
        hooked = dataclasses.replace(ctx, rows_hooked=True)
        assert wants_rows_hooks(ctx) == (not ctx.rows_hooked and auto(hooked) == "rows")


def test_builtin_strategies_are_registered_in_order() -> None:
    assert ("auto", *strategy_names()[:4]) == STRATEGIES


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.ModuleDict({"trunk": nn.Linear(3, 4), "a": nn.Linear(4, 1), "b": nn.Linear(4, 1)})


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"strategy": "fast"}, ValueError, r"strategy must be one of \('auto', 'loop'"),
        ({"store": "all"}, ValueError, "store must be 'stats' or 'full'"),
        ({"on_nonfinite": "ignore"}, ValueError, "on_nonfinite must be"),
        ({"flush_every": 3}, ValueError, "flush_every needs a positive int and a path"),
        ({"reduce": 3}, TypeError, "reduce must be a callable"),
        ({"layers": "tensor"}, ValueError, "layers must be 'module', 'param' or a mapping"),
        ({"every": 0}, ValueError, "every must be a positive integer"),
        ({"every": "often"}, TypeError, "every must be an int"),
    ],
)
def test_config_errors_are_the_recorders(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        RecordConfig(["a", "b"], **kwargs)
    with pytest.raises(error, match=match):
        gradcomp.record(_model(), ["a", "b"], **kwargs)


def test_config_is_frozen_and_shared(tmp_path) -> None:
    cfg = RecordConfig({"a": 1.0, "b": 0.5}, every=(0, 2), path=tmp_path / "r.nc")
    assert cfg.flush_every == DEFAULT_FLUSH_EVERY and cfg.task_names == ["a", "b"]
    assert [s for s in range(5) if cfg.schedule(s)] == [0, 2]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.strategy = "loop"  # type: ignore[misc]
    rec = Recorder.from_config(_model(), cfg)
    assert rec.config is cfg and rec._choice.config is cfg
    assert rec.weights == {"a": 1.0, "b": 0.5} and rec.path == tmp_path / "r.nc"
    with pytest.raises(ValueError, match="store must be"):
        dataclasses.replace(cfg, store="everything")  # a changed copy is validated again


def test_recorder_records_a_tuple_schedule() -> None:
    model = _model()
    x = torch.randn(5, 3)
    with gradcomp.record(model, ["a", "b"], every=(1, 3)) as rec:
        for _ in range(5):
            h = model["trunk"](x)
            rec.backward({"a": model["a"](h).sum(), "b": model["b"](h).square().sum()})
    assert rec.to_dataset()["step"].values.tolist() == [1, 3]


@pytest.mark.parametrize(
    "every", [None, 1, 3, 7, (0, 5), (2,), [4, 1], logarithmic(1, 40, num=5), lambda s: s % 6 == 1]
)
@pytest.mark.parametrize("last", [0, 1, 12, 40])
def test_as_schedule_gives_ncnet_trace_steps(every, last: int) -> None:
    """The one schedule type reproduces NCnet's ``trace_every`` steps exactly."""
    if isinstance(every, (tuple, list)) and max(every) > last:
        with pytest.raises(ValueError, match="outside"):
            as_schedule(every, last=last, name="trace_every")
        return
    got = scheduled(as_schedule(every, last=last, name="trace_every"), last)
    assert got == NCnetConfig(steps=last, trace_every=every).trace_steps()


def test_as_schedule_errors() -> None:
    with pytest.raises(TypeError, match="every must be an int"):
        as_schedule(None)  # the logarithmic default needs the last step
    with pytest.raises(ValueError, match="trace_every must be a positive integer"):
        as_schedule(0, name="trace_every")
    with pytest.raises(TypeError, match="not a bool"):
        as_schedule(True)
    with pytest.raises(ValueError, match="non-negative"):
        at([1, -2])
