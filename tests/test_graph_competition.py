"""Task–unit competition graphs against a per-slice networkx reference."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from gradcomp.graph import competition, competition_graph, ncnet_graph, shared_capacity, unit_shares

TASKS = ["A", "B"]


def gram_array(g: np.ndarray, tasks=TASKS, extra: dict | None = None) -> xr.DataArray:
    """``g`` has dims (*extra, unit, task, task_j)."""
    extra = extra or {}
    dims = (*extra, "unit", "task", "task_j")
    coords = {**extra, "unit": np.arange(g.shape[-3]), "task": tasks, "task_j": tasks}
    return xr.DataArray(g, dims=dims, coords=coords, name="unit_gram")


def grams_from_grads(grads: np.ndarray) -> np.ndarray:
    """grads (..., unit, task, fan_in) -> per-unit Gram (..., unit, task, task_j)."""
    return np.einsum("...tk,...sk->...ts", grads, grads)


def test_hand_made_four_units() -> None:
    g = np.zeros((4, 2, 2))
    g[0] = [[1, 0], [0, 0]]  # A alone
    g[1] = [[0, 0], [0, 1]]  # B alone
    g[2] = [[1, -0.5], [-0.5, 1]]  # both, conflicting
    g[3] = [[1, 0.5], [0.5, 1]]  # both, cooperating
    ds = competition(gram_array(g))
    assert ds["contested"].values.tolist() == [0, 0, 1, 0]
    assert int(ds["n_contested"]) == 1 and float(ds["contested_share"]) == 0.25
    assert ds["n_owned"].values.tolist() == [1, 1]
    assert int(ds["n_components"]) == 1
    np.testing.assert_allclose(ds["share"].sel(task="A").values, [1 / 3, 0, 1 / 3, 1 / 3])
    np.testing.assert_allclose(ds["contested_mass"].values, [1 / 3, 1 / 3])
    graph = competition_graph(gram_array(g))
    states = {u: d["state"] for u, d in graph.nodes(data=True) if u[0] == "unit"}
    assert states == {
        ("unit", 0): "owned",
        ("unit", 1): "owned",
        ("unit", 2): "contested",
        ("unit", 3): "shared",
    }
    assert graph.edges[("task", "A"), ("unit", 2)]["weight"] == pytest.approx(1 / 3)


def test_fully_separated_tasks_have_no_contested_units() -> None:
    rng = np.random.default_rng(0)
    grads = rng.standard_normal((6, 2, 3))
    grads[:3, 1] = 0  # B never touches units 0-2
    grads[3:, 0] = 0  # A never touches units 3-5
    ds = competition(gram_array(grams_from_grads(grads)))
    assert int(ds["n_contested"]) == 0
    assert int(ds["n_components"]) == 2
    assert ds["n_owned"].sum() <= 6


def test_unshared_heads_capacity_zero_and_no_contest() -> None:
    """NCnet whose heads share nothing: each head's hidden layer is its own (units 0..n-1 for A,
    n..2n-1 for B), so B's gradient on A's units is exactly 0 and vice versa."""
    width = 3
    rng = np.random.default_rng(1)
    grads = np.zeros((5, 2 * width, 2, 4))  # (step, unit, task, fan_in)
    grads[:, :width, 0] = rng.standard_normal((5, width, 4))
    grads[:, width:, 1] = rng.standard_normal((5, width, 4))
    ds = competition(gram_array(grams_from_grads(grads), extra={"step": np.arange(5)}))
    assert shared_capacity(ncnet_graph(width, shared=False)) == 0
    assert (ds["n_contested"] == 0).all()
    assert (ds["n_components"] == 2).all()


def reference(da: xr.DataArray, min_share=None) -> dict:
    graph = competition_graph(da, min_share=min_share)
    units = [d for n, d in graph.nodes(data=True) if n[0] == "unit"]
    comps = [c for c in nx.connected_components(graph) if any(n[0] == "task" for n in c)]
    owned = {t: sum(d["owner"] == t for d in units) for t in da["task"].values.tolist()}
    return {
        "n_contested": sum(d["contested"] for d in units),
        "n_units": len(units),
        "n_components": len(comps),
        "n_owned": owned,
        "contested": [
            int(graph.nodes[("unit", u)]["contested"])
            for u in da["unit"].values.tolist()
            if ("unit", u) in graph
        ],
    }


@settings(max_examples=40, deadline=None)
@given(
    st.integers(2, 4),
    st.integers(1, 9),
    st.integers(0, 2**32 - 1),
    st.sampled_from([None, 0.05, 0.3]),
)
def test_vectorized_matches_networkx_reference(n_tasks, n_units, seed, min_share) -> None:
    rng = np.random.default_rng(seed)
    tasks = [f"t{k}" for k in range(n_tasks)]
    grads = rng.standard_normal((3, 2, n_units, n_tasks, 3))  # (step, seed, unit, task, fan_in)
    grads *= rng.random((3, 2, n_units, n_tasks, 1)) < 0.7  # some tasks miss some units
    gram = grams_from_grads(grads)
    gram[0, 1, 0] = np.nan  # a NaN-padded unit in one slice
    da = gram_array(gram, tasks, extra={"step": [0, 5, 10], "seed": [0, 1]})
    ds = competition(da, min_share=min_share)
    for step in range(3):
        for s in range(2):
            sl = da.isel(step=step, seed=s)
            ref = reference(sl, min_share)
            got = ds.isel(step=step, seed=s)
            assert int(got["n_contested"]) == ref["n_contested"]
            assert int(got["n_units"]) == ref["n_units"]
            assert int(got["n_components"]) == ref["n_components"]
            assert got["n_owned"].values.tolist() == [ref["n_owned"][t] for t in tasks]
            valid = np.isfinite(got["share"].values).all(axis=-1)
            assert got["contested"].values[valid].tolist() == ref["contested"]
            assert 1 <= int(got["n_components"]) <= n_tasks
            shares = got["share"].values[valid]
            np.testing.assert_allclose(shares.sum(axis=0)[shares.sum(axis=0) > 0], 1.0, rtol=1e-12)


def test_layer_selection_and_errors(tmp_path) -> None:
    rng = np.random.default_rng(2)
    g = grams_from_grads(rng.standard_normal((2, 3, 4, 2, 3)))  # (step, layer, unit, task, k)
    g[:, 0] = np.nan  # the "all" layer has no units
    da = xr.DataArray(
        g,
        dims=("step", "layer", "unit", "task", "task_j"),
        coords={
            "step": [0, 1],
            "layer": ["all", "fc1", "fc2"],
            "unit": range(4),
            "task": TASKS,
            "task_j": TASKS,
        },
        name="unit_gram",
    )
    with pytest.raises(ValueError, match="pick a layer"):
        competition(da)
    ds = competition(da.to_dataset(), layer="fc1")
    assert ds.sizes == {"step": 2, "unit": 4, "task": 2}
    ds.to_netcdf(tmp_path / "c.nc", engine="h5netcdf")
    xr.testing.assert_identical(xr.load_dataset(tmp_path / "c.nc", engine="h5netcdf"), ds)
    only = da.sel(layer=["all", "fc2"])
    assert competition(only).sizes["unit"] == 4  # the one layer with units is picked
    with pytest.raises(ValueError, match="not in the recording"):
        competition(da, layer="fc9")
    with pytest.raises(ValueError, match="unit_gram"):
        competition(xr.Dataset({"gram": ("step", [0.0])}))
    with pytest.raises(ValueError, match="min_share"):
        competition(da, layer="fc1", min_share=0.0)
    with pytest.raises(ValueError, match="lacks 'unit'"):
        competition(da.isel(unit=0))
    with pytest.raises(ValueError, match="select one slice"):
        competition_graph(da, layer="fc1")
    with pytest.raises(ValueError, match="two tasks"):
        competition(da.isel(task=[0], task_j=[0]), layer="fc1")
    zero = da.sel(layer="fc1").copy()
    zero[:, :, 1, :] = 0.0
    zero[:, :, :, 1] = 0.0
    shares = unit_shares(zero)
    assert (shares.sel(task="B") == 0).all()  # no gradient: no share, no error


def test_ncnet_without_sharing_has_capacity_zero_and_no_contested_units() -> None:
    from gradcomp import ncnet
    from gradcomp.graph import capacity_coord

    config = ncnet.NCnetConfig(steps=30, units=True, unshared=True, trace_every=10)
    ds = ncnet.run(config, widths=[2, 3], seeds=2, progress=False)
    comp = competition(ds, layer="hidden")
    assert (comp["n_contested"] == 0).all()
    assert (comp["n_components"] == 2).all()  # the heads never meet on a unit
    assert (capacity_coord(ds).values == 0).all()
    shared = ncnet.run(
        ncnet.NCnetConfig(steps=30, units=True, trace_every=10), [2, 3], 2, progress=False
    )
    np.testing.assert_array_equal(capacity_coord(shared).values, [2.0, 3.0])


def test_recorder_output() -> None:
    import torch
    from torch import nn

    import gradcomp

    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh())
    heads = nn.ModuleDict({"a": nn.Linear(5, 1), "b": nn.Linear(5, 1)})
    model = nn.ModuleDict({"trunk": trunk, "heads": heads}).double()
    x = torch.randn(16, 4, dtype=torch.float64)
    ya, yb = torch.randn(16, 1, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)
    with gradcomp.record(model, ["a", "b"], units=True) as rec:
        for _ in range(3):
            model.zero_grad()
            h = trunk(x)
            losses = {
                "a": ((heads["a"](h) - ya) ** 2).mean(),
                "b": ((heads["b"](h) - yb) ** 2).mean(),
            }
            rec.backward(losses)
    ds = rec.to_dataset()
    with pytest.raises(ValueError, match="pick a layer"):
        competition(ds)
    comp = competition(ds, layer="trunk.0")
    assert comp.sizes["unit"] == 6 and (comp["n_units"] == 6).all()
    ref = reference(ds["unit_gram"].sel(layer="trunk.0").isel(step=-1))
    assert int(comp["n_contested"].isel(step=-1)) == ref["n_contested"]
