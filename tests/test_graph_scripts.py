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
    assert out.stat().st_size > 1000


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
    assert out.stat().st_size > 1000


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
