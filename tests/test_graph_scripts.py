"""The graph scripts in analyses/ and figures/ run on tiny inputs; the plot functions draw."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import xarray as xr
from _scripts import load_script

from gradcomp.graph import competition_graph
from gradcomp.graph.design import design_bounds
from gradcomp.plot import graph as plot_graph

ROOT = Path(__file__).resolve().parents[1]


def test_convac_design_scripts(tmp_path) -> None:
    assert load_script("analyses/convac_design.py").main(["--tiny", "--out", str(tmp_path)]) == 0
    ds = xr.load_dataset(tmp_path / "convac_design_tiny.nc", engine="h5netcdf")
    np.testing.assert_array_equal(ds["rank_bits"].values, ds["bits"].values)  # powers of 2: tight
    out = tmp_path / "fig.png"
    assert (
        load_script("figures/convac_design.py").main(["--data", str(tmp_path), "--out", str(out)])
        == 0
    )
    assert _stamp_matches(out, tmp_path / "convac_design.json")


def test_full_design_profiles_show_the_tradeoff() -> None:
    script = load_script("analyses/convac_design.py")
    ds = design_bounds(script.FULL, 16, 8)
    base, tip = ds.sel(profile="wide base"), ds.sel(profile="wide tip")
    assert abs(int(base["n_params"]) - int(tip["n_params"])) / int(tip["n_params"]) < 0.02
    assert float(base["bits"].sel(block=1)) > float(tip["bits"].sel(block=1))  # short range
    assert float(base["bits"].sel(block=8)) < float(tip["bits"].sel(block=8))  # long range


# the correlator's percentile bootstrap over 4 widths draws degenerate resamples (NaN r), and scipy
# warns; reported to the correlator's owner (gradcomp/analyze/correlate.py)
@pytest.mark.filterwarnings("ignore:The BCa confidence interval cannot be calculated")
def test_ncnet_competition_scripts(tmp_path) -> None:
    data = tmp_path / "nc.nc"
    assert load_script("analyses/ncnet_competition.py").main(["--tiny", "--out", str(data)]) == 0
    ds = xr.load_dataset(data, engine="h5netcdf")
    assert set(ds["analysis"].values) == {"across_width", "per_seed", "per_seed_within_width"}
    assert (ds["shared_capacity"].values == ds["width"].values).all()
    assert int(ds.attrs["critical_width"]) in ds["width"].values
    # the contested counts never exceed the width
    assert (ds["n_contested"] <= ds["width"]).all()
    out = tmp_path / "fig.png"
    assert (
        load_script("figures/ncnet_competition.py").main(["--data", str(data), "--out", str(out)])
        == 0
    )
    assert _stamp_matches(out, data.with_suffix(".json"))


def test_plot_functions_return_their_axes() -> None:
    g = np.zeros((3, 2, 2))
    g[0] = [[1, 0], [0, 0]]
    g[1] = [[1, -1], [-1, 2]]
    g[2] = [[0, 0], [0, 0]]
    da = xr.DataArray(
        g, dims=("unit", "task", "task_j"), coords={"task": ["A", "B"], "task_j": ["A", "B"]}
    )
    fig, axes = plt.subplots(1, 2)
    assert plot_graph.competition_graph(competition_graph(da), axes[0]) is axes[0]
    ds = design_bounds({"a": (2, 2), "b": (1, 4)}, 4, 2, measure_seed=0)
    assert plot_graph.convac_bounds(ds, axes[1]) is axes[1]
    plt.close(fig)


def test_docs_example_runs() -> None:
    text = (ROOT / "docs" / "graph.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(code, "docs/graph.md", "exec"), namespace)
    assert namespace["cut"].bits == 1.0 and namespace["cut"].bound == 2
    assert namespace["matricization_rank"](namespace["a"], [0, 1, 2, 3]) == 2


def _stamp_matches(png: Path, summary_path: Path) -> bool:
    from gradcomp import summary

    stamp = summary.read_stamp(png)
    return stamp.get(summary.KEY_SHA) == summary.sha256(summary_path)


def test_family_screen_scripts_tiny(tmp_path) -> None:
    data = tmp_path / "screen.nc"
    script = load_script("analyses/ncnet_family_screen.py")
    assert script.main(["--tiny", "--out", str(data)]) == 0
    ds = xr.load_dataset(data, engine="h5netcdf")
    assert ds.sizes["family"] == 4 and list(ds["width"].values) == [1, 2, 3]
    assert {"S", "S_lo", "S_hi", "delta", "cbd_margin", "rank", "qualifies"} <= set(ds)
    assert ds.attrs["seeds"] == "10000..10015"  # disjoint from the measurement's seeds 0..
    png = tmp_path / "screen.png"
    fig_script = load_script("figures/ncnet_family_screen.py")
    assert fig_script.main(["--data", str(data), "--out", str(png), "--tiny"]) == 0
    assert _stamp_matches(png, data.with_suffix(".json"))


def test_family_set_is_the_classes_under_relabelling_and_head_swap() -> None:
    """34 classes, the default among them, no two equivalent: checked on truth tables."""
    import itertools

    from gradcomp.ncnet import truth_table

    script = load_script("analyses/ncnet_family_screen.py")
    fams = script.families()
    assert len(fams) == 34 == len(set(fams))
    assert (("x1", "x1 ^ x2"), ("x1", "x1 ^ x3")) in fams
    patterns = np.array(list(itertools.product([0, 1], repeat=3)))

    def signature(fam) -> frozenset:
        """Truth tables of the family under every input permutation and head swap."""
        images = set()
        for p in itertools.permutations(range(3)):
            # relabel inputs: evaluate each task on permuted patterns
            idx = [int("".join(map(str, row[list(p)])), 2) for row in patterns]
            tabs = tuple(tuple(truth_table(t, 3)[idx]) for head in fam for t in head)
            images.add(tabs)
            images.add(tabs[2:] + tabs[:2])
        return frozenset(images)

    sigs = [signature(f) for f in fams]
    assert len(set(sigs)) == 34  # pairwise inequivalent
    # and complete: 3 inputs × 6 gates per head, every ordered pair falls in one class
    singles = ["x1", "x2", "x3"]
    gates = [f"x{i} {op} x{j}" for op in "^&" for i, j in ((1, 2), (1, 3), (2, 3))]
    for a1, a2, b1, b2 in itertools.product(singles, gates, singles, gates):
        sig = signature(((a1, a2), (b1, b2)))
        assert sig in sigs


def test_selection_rule_on_synthetic_curves() -> None:
    script = load_script("analyses/ncnet_family_screen.py")
    w = [1, 2, 3, 4]
    s = np.array(
        [
            [-2.0, 3.0, 2.5, 2.0],  # rise, peak 3.0 (lo 2.9), return: qualifies
            [-2.0, 3.5, 2.5, 2.0],  # higher peak: selected
            [-2.0, 3.9, 2.5, 2.2],  # no return
            [2.5, 3.9, 2.5, 2.0],  # no rise
            [-2.0, 2.05, 2.0, 2.0],  # peak interval not above 2
        ]
    )
    est = xr.Dataset(
        {
            "S": (("family", "width"), s),
            "S_lo": (("family", "width"), s - 0.1),
            "S_hi": (("family", "width"), s + 0.1),
        },
        coords={"family": list("abcde"), "width": w},
    )
    sel = script.select(est)
    assert sel["qualifies"].values.tolist() == [True, True, False, False, False]
    assert sel["rank"].values.tolist() == [2, 1, 0, 0, 0]
    assert sel.attrs["selected"] == "b"
    assert sel["peak_width"].values.tolist() == [2, 2, 2, 2, 2]
