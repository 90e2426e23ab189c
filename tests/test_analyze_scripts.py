"""The mechanism experiment and figure scripts run on tiny inputs; the control shows nothing."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from _scripts import load_script

from gradcomp._dims import WIDTH
from gradcomp.plot import mechanism as pm


def test_mechanism_analysis_and_figure_on_tiny_inputs(tmp_path) -> None:
    data = tmp_path / "mech.nc"
    assert load_script("analyses/ncnet_mechanism.py").main(["--tiny", "--out", str(data)]) == 0
    tree = xr.open_datatree(data, engine="h5netcdf")
    assert {"traces", "units", "sensing_loss", "lagged", "correlation", "control_traces"} <= set(
        tree.children
    )
    assert int(tree.attrs["critical_width"]) in tree["traces"][WIDTH].values
    # the unshared control: no A/B conflict through a shared layer, sensing exactly at chance
    control = tree["control_traces"].to_dataset()
    np.testing.assert_array_equal(control["conflict_share"].values, 0.0)
    for node in ("control_sensing_loss", "control_sensing_oscillation"):
        sense = tree[node].to_dataset()
        np.testing.assert_array_equal(sense["accuracy"].values, 0.5)
        assert np.all(np.isnan(sense["onset"].values))
    # every analysis carries an interval and an effective sample size
    corr = tree["correlation"].to_dataset()
    assert {"pearson_lo", "pearson_hi", "spearman_lo", "n_eff"} <= set(corr.data_vars)
    pdf = tmp_path / "fig.pdf"
    assert (
        load_script("figures/ncnet_mechanism.py").main(["--data", str(data), "--out", str(pdf)])
        == 0
    )
    assert pdf.stat().st_size > 1000 and pdf.with_suffix(".png").stat().st_size > 1000


def test_plot_functions_take_data_and_axes_and_return_axes() -> None:
    steps = np.arange(0, 30)
    traces = xr.Dataset(
        {
            name: ((WIDTH, "step"), np.tile(np.linspace(0, 1, 30), (2, 1)) + off)
            for name, off in (("S", 0), ("S_lo", -0.1), ("S_hi", 0.1))
        },
        coords={WIDTH: [2, 3], "step": steps},
    )
    fig, ax = plt.subplots()
    assert pm.s_over_training(traces, ax, [2, 3]) is ax
    plt.close(fig)
    corr = xr.Dataset(
        {k: ("analysis", [0.2, np.nan]) for k in ("pearson", "pearson_lo", "pearson_hi")}
        | {"n_eff": ("analysis", [30.0, np.nan])},
        coords={"analysis": ["a", "b"]},
    )
    fig, ax = plt.subplots()
    assert pm.correlation_panel(corr, ax) is ax
    plt.close(fig)


def test_units_are_ranked_within_each_run_before_averaging() -> None:
    """Units have no identity across seeds: the map averages the k-th most contested unit."""
    script = load_script("analyses/ncnet_mechanism.py")
    g = np.random.default_rng(0)
    f = g.random((3, 2, 2, 5, 4))  # seed, alice, bob, step, unit
    full = np.broadcast_to(f[..., None, :, None, None], (3, 2, 2, 5, 1, 4, 2, 2)).copy()
    dims = ("seed", "alice", "bob", "step", "layer", "unit", "task", "task_j")
    con = xr.Dataset(
        {"unit_conflict_frequency": (dims, full), "unit_conflict_strength": (dims, full)},
        coords={
            "alice": [1, 2],
            "bob": [1, 2],
            "step": np.arange(5),
            "layer": ["hidden"],
            "task": ["A", "B"],
            "task_j": ["A", "B"],
            "unit": np.arange(4),
        },
    )
    out = script._ranked_units(con)["unit_conflict_frequency"].transpose(
        "alice", "bob", "unit", "step"
    )
    ref = np.zeros((2, 2, 4, 5))
    for s in range(3):
        for a in range(2):
            for b in range(2):
                ranked = sorted(range(4), key=lambda u: -f[s, a, b, :, u].mean())
                ref[a, b] += np.array([f[s, a, b, :, u] for u in ranked]) / 3
    np.testing.assert_allclose(out.values, ref, rtol=1e-12)
