"""The recorder under ``torch.compile``: compiled statistics equal eager ones, or a clear error."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import xarray as xr
from torch import Tensor, nn

import gradcomp
from gradcomp.recorder import CompiledSharingWarning
from gradcomp.recorder.shared import resolve_shared

N = 12
ROWS = {"a": slice(0, 4), "b": slice(4, 8), "c": slice(8, 12)}
G = torch.Generator().manual_seed(3)
X = torch.randn(N, 4, dtype=torch.float64, generator=G)
Y = torch.randn(N, dtype=torch.float64, generator=G)
# torch 2.13's inductor uses a deprecated torch.jit API (not gradcomp's): keep -W error usable
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.script_method.*:DeprecationWarning")
RTOL, ATOL = 1e-10, 1e-14  # float64: compiled and eager graphs differ only in summation order


class Net(nn.Module):
    """A tanh trunk and one head per task; ``rows=True``: task t only sees its own batch rows."""

    def __init__(self, tasks: tuple[str, ...] = ("a", "b"), rows: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh())
        self.heads = nn.ModuleDict({t: nn.Linear(5, 1) for t in tasks})
        self.rows = rows
        self.double()

    def forward(self, x: Tensor, y: Tensor) -> dict[str, Any]:
        h = self.trunk(x)
        out = {}
        for t, head in self.heads.items():
            r = ROWS[t] if self.rows else slice(None)
            out[t] = ((head(h[r]).squeeze(-1) - y[r]) ** 2).mean()
        return {"losses": out, "h": h}


def _train(
    model: nn.Module,
    tasks: tuple[str, ...] = ("a", "b"),
    steps: int = 3,
    rows: bool = False,
    features: bool = False,
    **kw: Any,
) -> tuple[xr.Dataset, list[Tensor]]:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradcomp.record(model, list(tasks), **kw) as rec:
        for _ in range(steps):
            opt.zero_grad()
            out = model(X, Y)
            extra: dict[str, Any] = {}
            if rows:
                extra["rows"] = {t: ROWS[t] for t in tasks}
            if features:
                extra["features"] = out["h"]
            rec.backward(out["losses"], **extra)
            opt.step()
    return rec.to_dataset(), [p.detach().clone() for p in model.parameters()]


def _same(ds: xr.Dataset, ref: xr.Dataset, params: list[Tensor], ref_params: list[Tensor]) -> None:
    assert list(ds["layer"].values) == list(ref["layer"].values)
    assert json.loads(ds.attrs["shared_parameters"]) == json.loads(ref.attrs["shared_parameters"])
    for v in ("gram", "grad_norm", "cosine", "loss"):
        np.testing.assert_allclose(ds[v].values, ref[v].values, rtol=RTOL, atol=ATOL, err_msg=v)
    for p, q in zip(params, ref_params, strict=True):  # training unchanged
        torch.testing.assert_close(p, q, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("shared", [None, "trunk"])
@pytest.mark.parametrize("strategy", ["auto", "loop", "batched"])
def test_aot_eager_equals_eager(strategy: str, shared: str | None) -> None:
    eager = Net()
    ref, ref_p = _train(eager, shared=None if shared is None else eager.trunk, strategy="loop")
    model = Net()
    compiled = torch.compile(model, backend="aot_eager")
    ds, ps = _train(compiled, shared=None if shared is None else model.trunk, strategy=strategy)
    _same(ds, ref, ps, ref_p)
    assert ds.attrs["shared_parameters"] == json.dumps(
        ["trunk.0.weight", "trunk.0.bias", "trunk.2.weight", "trunk.2.bias"]
    )
    want = "loop" if strategy == "auto" else strategy
    assert json.loads(ds.attrs["config"])["strategies_used"] == [want]


def test_inductor_loop_and_auto_equal_eager_and_batched_says_use_loop() -> None:
    ref, ref_p = _train(Net(), strategy="loop")
    for strategy in ("auto", "loop"):
        ds, ps = _train(torch.compile(Net(), backend="inductor"), strategy=strategy)
        _same(ds, ref, ps, ref_p)
    for strategy in ("batched", "features"):
        with pytest.raises(ValueError, match=rf"strategy[= ]'{strategy}'.*strategy='loop'"):
            _train(torch.compile(Net(), backend="inductor"), strategy=strategy, features=True)


def test_auto_with_rows_takes_loop_under_compile() -> None:
    tasks = ("a", "b", "c")  # T = 3 and rows=: eager "auto" would take "rows"
    ref, ref_p = _train(Net(tasks, rows=True), tasks, rows=True, strategy="loop")
    compiled = torch.compile(Net(tasks, rows=True), backend="aot_eager")
    ds, ps = _train(compiled, tasks, rows=True)
    _same(ds, ref, ps, ref_p)
    assert json.loads(ds.attrs["config"])["strategies_used"] == ["loop"]


def test_explicit_rows_refused_under_compile() -> None:
    tasks = ("a", "b", "c")
    compiled = torch.compile(Net(tasks, rows=True), backend="aot_eager")
    with pytest.raises(ValueError, match=r"'rows' cannot run under torch.compile.*'loop'"):
        _train(compiled, tasks, rows=True, strategy="rows")


_compiled_trunk: Callable[..., Tensor] = torch.compile(
    lambda x, w, b: torch.tanh(x @ w.T + b), backend="aot_eager"
)


class FnNet(Net):
    """The first trunk layer runs through a compiled function (no compiled module anywhere)."""

    def forward(self, x: Tensor, y: Tensor) -> dict[str, Any]:
        first = self.trunk[0]
        h = self.trunk[3](self.trunk[2](_compiled_trunk(x, first.weight, first.bias)))
        out = {t: ((hd(h).squeeze(-1) - y) ** 2).mean() for t, hd in self.heads.items()}
        return {"losses": out, "h": h}


def test_compiled_function_inside_forward_is_detected_from_the_graph() -> None:
    ref, ref_p = _train(Net(), shared=None)
    ds, ps = _train(FnNet(), shared=None)
    _same(ds, ref, ps, ref_p)
    with pytest.raises(ValueError, match=r"'rows' cannot run under torch.compile"):
        _train(FnNet(("a", "b", "c")), ("a", "b", "c"), rows=True, strategy="rows")


def test_features_with_compiled_trunk_only_equals_eager() -> None:
    eager = Net()
    ref, ref_p = _train(eager, shared=eager.trunk, strategy="loop")
    model = Net()
    model.trunk = torch.compile(model.trunk, backend="aot_eager")  # type: ignore[assignment]
    ds, ps = _train(model, shared=None, strategy="features", features=True)
    _same(ds, ref, ps, ref_p)  # names without "trunk._orig_mod."


def test_features_on_fully_compiled_model_is_refused() -> None:
    compiled = torch.compile(Net(), backend="aot_eager")
    with pytest.raises(ValueError, match=r"does not reach features=.*strategy='loop'"):
        _train(compiled, strategy="features", features=True)


def test_shared_names_accept_the_compiled_prefix() -> None:
    compiled = torch.compile(Net(), backend="aot_eager")
    for name in ("trunk.0.weight", "_orig_mod.trunk.0.weight"):
        assert resolve_shared(compiled, name) == ["trunk.0.weight"]


def test_task_reaching_no_shared_parameter_under_compile() -> None:
    class Third(Net):
        def forward(self, x: Tensor, y: Tensor) -> dict[str, Any]:
            out = super().forward(x, y)
            skip = torch.cat([x, x[:, :1]], 1)  # task c skips the trunk
            out["losses"]["c"] = (self.heads["c"](skip) ** 2).mean()
            return out

    compiled = torch.compile(Third(("a", "b", "c")), backend="aot_eager")
    with pytest.raises(ValueError, match="task 'c' reaches no shared parameter"):
        _train(compiled, ("a", "b", "c"))


class ZeroB(nn.Module):
    """LoRA-like: ``b`` starts at zero, so ``a`` gets an exactly zero gradient on step 0."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(4, 3, bias=False)
        self.b = nn.Linear(3, 5, bias=False)
        nn.init.zeros_(self.b.weight)
        self.heads = nn.ModuleDict({t: nn.Linear(5, 1) for t in ("a", "b")})
        self.double()

    def forward(self, x: Tensor, y: Tensor) -> dict[str, Any]:
        h = torch.tanh(self.b(self.a(x)) + 1.0)
        out = {t: ((hd(h).squeeze(-1) - y) ** 2).mean() for t, hd in self.heads.items()}
        return {"losses": out, "h": h}


def test_zero_gradient_parameters_are_reported_under_compile() -> None:
    compiled = torch.compile(ZeroB(), backend="aot_eager")
    with pytest.warns(CompiledSharingWarning, match=r"\['a.weight'\].*pass shared="):
        ds, _ = _train(compiled, steps=1)
    assert json.loads(ds.attrs["shared_parameters"]) == ["b.weight"]
    eager, _ = _train(ZeroB(), steps=1)  # the graph walk sees a.weight
    assert json.loads(eager.attrs["shared_parameters"]) == ["a.weight", "b.weight"]
