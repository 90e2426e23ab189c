"""The mechanism experiment and figure scripts run on tiny inputs; the control shows nothing."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from _scripts import load_script

from gradcomp.dims import WIDTH
from gradcomp.plot import mechanism as pm


def test_mechanism_analysis_and_figure_on_tiny_inputs(tmp_path) -> None:
    data, summary = tmp_path / "mech.nc", tmp_path / "mech.json"
    script = load_script("analyses/ncnet_mechanism.py")
    assert script.main(["--tiny", "--out", str(data), "--summary", str(summary)]) == 0
    tree = xr.open_datatree(data, engine="h5netcdf")
    assert {
        "selection",
        "traces",
        "units",
        "sensing_loss",
        "lagged",
        "correlation",
        "control_traces",
        "independent_sensing_loss",
        "independent_shared_sensing_loss",
        "lr_sweep",
        "lr_blocks",
    } <= set(tree.children)
    # sample splitting: the critical width is the argmax of S on the selection seeds, which
    # are disjoint from the estimation seeds every other node uses
    sel = tree["selection"].to_dataset()
    crit = int(tree.attrs["critical_width"])
    assert crit == int(sel[WIDTH].values[int(np.nanargmax(sel["S_selection"].values))])
    first, last = (int(v) for v in tree.attrs["selection_seeds"].split(".."))
    assert first == int(tree.attrs["estimation_seeds"].split("..")[1]) + 1 and last > first
    assert "sample splitting" in tree.attrs["critical_rule"]
    # common random numbers, no shared layer: exactly chance and no conflict, by construction
    control = tree["control_traces"].to_dataset()
    np.testing.assert_array_equal(control["conflict_share"].values, 0.0)
    for node in ("control_sensing_loss", "control_sensing_oscillation"):
        sense = tree[node].to_dataset()
        np.testing.assert_array_equal(sense["accuracy"].values, 0.5)
        assert np.all(np.isnan(sense["onset"].values))
    # independent initialisations per setting pair: chance only on average, so it can fail
    indep = tree["independent_sensing_loss"].to_dataset()
    assert np.unique(indep["accuracy"].values).size > 1
    assert np.all((indep["p_value"] > 0) & (indep["p_value"] <= 1))
    # multiplicity: q-values beside every family of p-values, never below the p-value
    for node, p, q in (
        ("sensing_loss", "p_value", "q_value"),
        ("sensing_oscillation", "p_value", "q_value"),
        ("correlation", "pearson_p", "pearson_q"),
        ("lagged", "lead_asymmetry_p", "lead_asymmetry_q"),
    ):
        ds = tree[node].to_dataset()
        ok = np.isfinite(ds[p].values)
        assert np.all(ds[q].values[ok] >= ds[p].values[ok] - 1e-12), node
    corr = tree["correlation"].to_dataset()
    assert {"pearson_lo", "pearson_hi", "spearman_lo", "n_eff"} <= set(corr.data_vars)
    # labels are this script's, not inherited from the Gram (a past bug)
    traces = tree["traces"].to_dataset()
    assert "conflict" in traces["conflict_share"].attrs["long_name"]
    assert "oscillation" in traces["osc_amplitude"].attrs["long_name"]
    # the learning-rate sweep: every lr at the critical (and comfortable) width, spectrum on
    sweep = tree["lr_sweep"].to_dataset()
    assert sweep["lr"].values.tolist() == [0.5, 6.0]
    assert np.all(np.isfinite(sweep["hf_share"].values)) and np.all(sweep["n_seeds"] == 8)
    assert set(sweep["feature"].values) == {"loss", "osc_amplitude", "loss_highpass"}
    # the committed summary's shape: rounded numbers plus how they were made
    doc = json.loads(summary.read_text())
    assert {"command", "machine", "load_1min_start", "run_id", "timings"} <= set(doc)
    js = doc["values"]
    assert js["critical_width"] == crit
    assert {"first_window_accuracy_min", "first_window_accuracy_max", "significant_q"} <= set(
        js["sensing_loss_at_critical"]
    )
    pdf = tmp_path / "fig.pdf"
    figure = load_script("figures/ncnet_mechanism.py")
    assert figure.main(["--data", str(data), "--out", str(pdf)]) == 0
    assert pdf.stat().st_size > 1000 and pdf.with_suffix(".png").stat().st_size > 1000
    for i in (1, 2):
        assert (tmp_path / f"fig_supp{i}.png").stat().st_size > 1000
    fig = figure.draw(tree)
    assert len([ax for ax in fig.axes if ax.has_data()]) <= 4  # a printable main figure
    plt.close(fig)


def test_bh_qvalues_match_a_naive_step_up_reference() -> None:
    """Per family (one per entry of the other dims), NaN left out, float64."""
    from gradcomp.analyze import qvalues

    g = np.random.default_rng(1)
    p = g.random((3, 4, 5)) ** 2
    p[0, 1, 2] = np.nan
    p[2, :, 0] = p[2, 0, 1]  # ties
    da = xr.DataArray(p, dims=("w", "a", "b"))

    def naive(v: np.ndarray) -> np.ndarray:
        out = np.full(v.shape, np.nan)
        idx = [i for i in range(v.size) if np.isfinite(v[i])]
        m = len(idx)
        for i in idx:
            out[i] = min(
                1.0, min(v[j] * m / sum(v[k] <= v[j] for k in idx) for j in idx if v[j] >= v[i])
            )
        return out

    for fn in (qvalues,):
        q = fn(da, dims=("a", "b"))
        assert q.dims == da.dims
        for w in range(3):
            np.testing.assert_allclose(
                q.values[w].ravel(), naive(p[w].ravel()), rtol=1e-12, equal_nan=True
            )
        q1 = fn(da, dims="b")
        for w in range(3):
            for a in range(4):
                np.testing.assert_allclose(
                    q1.values[w, a], naive(p[w, a]), rtol=1e-12, equal_nan=True
                )


def test_block_oscillation_measures_against_a_loop() -> None:
    """Detrended RMS sees a wiggle on a steep trend; reversals and HF share as a loop."""
    script = load_script("analyses/ncnet_mechanism.py")
    t = np.arange(60.0)
    amp = 1e-2
    traces = np.stack(
        [
            5.0 - 0.2 * t + amp * np.cos(np.pi * t),  # period-2 wiggle on a steep trend
            np.exp(-t / 10),  # smooth, monotone
            1.0 + amp * np.sin(2 * np.pi * t / 12),  # slow oscillation
        ]
    )
    loss = xr.DataArray(traces, dims=("run", "step"), coords={"step": t})
    out = script._blocks(loss, 20)
    assert out["osc_detrended"].shape == (3, 3)
    np.testing.assert_allclose(out["osc_detrended"].values[0], amp, rtol=0.05)
    assert np.all(out["hf_share"].values[0] > 0.99) and np.all(out["hf_share"].values[1] < 0.2)
    # reversals are blind to the wiggle on the steep trend (every increment is negative)
    np.testing.assert_array_equal(out["reversing_share"].values[:2], 0.0)
    np.testing.assert_array_equal(out["reversing_share"].values[2], 1.0)
    for r in range(3):
        for b in range(3):
            w = traces[r, 20 * b : 20 * (b + 1)]
            x = np.arange(20.0)
            resid = w - np.polyval(np.polyfit(x, w, 1), x)
            np.testing.assert_allclose(
                out["osc_detrended"].values[r, b], resid.std(), rtol=1e-6, atol=1e-12
            )
            d = np.diff(w)
            rev = sum(d[i] * d[i + 1] < 0 for i in range(len(d) - 1))
            assert out["reversing_share"].values[r, b] == float(rev >= 2)
    np.testing.assert_array_equal(out["step"].values, [19, 39, 59])


def test_independent_pairs_take_their_own_seed_blocks() -> None:
    """Pair p of the independent control is ncnet.run's pair p on the p-th block of seeds."""
    from gradcomp import ncnet

    script = load_script("analyses/ncnet_mechanism.py")
    cfg = ncnet.NCnetConfig(inputs=3, steps=5, trace_every=1, unshared=True)
    ind = script.independent_run(cfg, 2, 3, 100)
    for i, a in enumerate((1, 2)):
        for j, b in enumerate((1, 2)):
            seeds = list(range(100 + (2 * i + j) * 3, 100 + (2 * i + j + 1) * 3))
            ref = ncnet.run(cfg, [2], seeds, progress=False).sel(alice=a, bob=b)
            got = ind.sel(alice=a, bob=b)
            np.testing.assert_array_equal(got["loss"].values, ref["loss"].values)
    # with common random numbers head A's loss ignores Bob's setting; here it does not
    crn = ncnet.run(cfg, [2], 3, progress=False)
    a_loss = crn["loss"].sel(task="A")
    np.testing.assert_array_equal(a_loss.sel(bob=1).values, a_loss.sel(bob=2).values)
    a_ind = ind["loss"].sel(task="A")
    assert not np.array_equal(a_ind.sel(bob=1).values, a_ind.sel(bob=2).values)


def test_diverged_seeds_are_dropped_and_counted() -> None:
    script = load_script("analyses/ncnet_mechanism.py")
    loss = np.ones((1, 4, 2, 2, 3, 2))
    loss[0, 2, 1, 0, 2, 1] = np.nan
    ds = xr.Dataset(
        {"loss": (("width", "seed", "alice", "bob", "step", "task"), loss)},
        coords={"width": [3], "seed": [0, 1, 2, 3]},
    )
    kept, n = script._drop_diverged(ds)
    assert n == 1 and kept["seed"].values.tolist() == [0, 1, 3]


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


def test_the_docs_quote_mechanism_numbers_from_the_committed_summary() -> None:
    """README / docs mark each mechanism number with its key in the committed summary."""
    from _scripts import ROOT

    from gradcomp import summary

    data = json.loads((ROOT / "analyses/summaries/ncnet_mechanism.json").read_text())
    found = 0
    for doc in ("README.md", "docs/analyze.md"):
        for m in summary.MARKER.finditer((ROOT / doc).read_text()):
            if m["src"] == "analyses/ncnet_mechanism":
                summary.lookup(data, m["key"])  # KeyError for a number the script does not make
                found += 1
    assert found > 30
    assert {"command", "machine", "load_1min_start", "timings", "values"} <= set(data)
