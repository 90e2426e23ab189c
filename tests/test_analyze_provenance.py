"""Every analyzer keeps its input's provenance attrs and adds its own (``analysis``, a history
line): a figure made from an analysis can be traced back to the recording and its strategy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

import gradcomp
import gradcomp.accessor  # registers ds.gradcomp
from gradcomp.analyze import conflict, correlate, lagged, oscillation, sensing
from gradcomp.dims import ALICE, ALL, BOB, LAYER, SEED, STEP, TASK, TASK_J, WIDTH
from gradcomp.graph import competition
from gradcomp.provenance import OWN, SOURCE_PREFIX, derive, provenance


def recording(**options) -> xr.Dataset:
    """A real recording (its attrs: strategy, shared parameters, config, versions, history)."""
    torch.manual_seed(0)
    m = nn.ModuleDict({"trunk": nn.Linear(3, 4), "A": nn.Linear(4, 1), "B": nn.Linear(4, 1)})
    x = torch.randn(6, 3)
    with gradcomp.record(m.double(), ["A", "B"], **options) as rec:
        for _ in range(2):
            h = torch.tanh(m["trunk"](x.double()))
            rec.backward({t: m[t](h).pow(2).mean() for t in "AB"})
    return rec.to_dataset()


def recording_attrs() -> dict:
    attrs = recording().attrs
    # an ensemble's own attrs and a run made under other library versions
    return {**attrs, "method": "vmap", "experiment": "ncnet", "torch_version": "0.0.1"}


@pytest.fixture(scope="module")
def ensemble() -> xr.Dataset:
    g = np.random.default_rng(1)
    shape = (2, 6, 2, 2, 24, 2)
    loss = g.normal(size=shape).cumsum(-2)
    ds = xr.Dataset(
        {"loss": ((WIDTH, SEED, ALICE, BOB, STEP, TASK), loss)},
        coords={
            WIDTH: [2, 3],
            SEED: np.arange(6),
            ALICE: [1, 2],
            BOB: [1, 2],
            STEP: np.arange(24),
            TASK: ["A", "B"],
        },
    )
    ds["loss_a"] = ds["loss"].sel({TASK: "A"}, drop=True)
    ds["loss_b"] = ds["loss"].sel({TASK: "B"}, drop=True)
    return ds.assign_attrs(recording_attrs())


def with_gram(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with a Gram of random per-task gradients on one layer ``"all"``."""
    grads = np.random.default_rng(2).normal(size=(*ds["loss"].shape[:-1], 2, 5))
    gram = np.einsum("...id,...jd->...ij", grads, grads)[..., None, :, :]
    dims = (*ds["loss"].dims[:-1], LAYER, TASK, TASK_J)
    return ds.assign(gram=(dims, gram)).assign_coords({LAYER: [ALL], TASK_J: ["A", "B"]})


ANALYSES = {
    "conflict": lambda ds: conflict(with_gram(ds), window=4),
    "oscillation": lambda ds: oscillation(ds, window=8),
    "sensing": lambda ds: sensing(ds, window=8, n_permutations=39, n_boot=49),
    "correlate": lambda ds: correlate(
        ds["loss_a"], ds["loss_b"], [SEED, STEP], serial=STEP, n_boot=49, source=ds
    ),
    "lagged": lambda ds: lagged(ds["loss_a"], ds["loss_b"], max_lag=2, n_boot=49, source=ds),
    "correlate via accessor": lambda ds: ds.gradcomp.correlate(
        "loss_a", "loss_b", [SEED, STEP], serial=STEP, n_boot=49
    ),
    "lagged via accessor": lambda ds: ds.gradcomp.lagged("loss_a", "loss_b", max_lag=2, n_boot=49),
    "oscillation via accessor": lambda ds: ds.gradcomp.oscillation(window=8),
}


def check_kept(source: dict, out: dict, name: str) -> None:
    """Every attr of ``source`` is in ``out``, under its name or as ``source_<name>``."""
    for key, value in source.items():
        if key == "history":
            continue
        if key in OWN or key in ("config", "torch_version"):  # set by the analysis itself
            assert out[SOURCE_PREFIX + key] == value, key
        else:
            assert out[key] == value, key
    lines = out["history"].split("\n")
    assert lines[:-1] == source["history"].split("\n")
    assert lines[-1].endswith(f"gradcomp.analyze.{name}")
    assert out["analysis"].startswith(f"{name}(")
    assert json.loads(out["config"])["analyzer"] == name
    assert out["torch_version"] == torch.__version__  # the analysis' own version


@pytest.mark.parametrize("how", list(ANALYSES))
def test_analysis_keeps_the_input_provenance(ensemble: xr.Dataset, how: str, tmp_path) -> None:
    out = ANALYSES[how](ensemble)
    name = how.split()[0]
    check_kept(dict(ensemble.attrs), dict(out.attrs), name)
    assert json.loads(out.attrs["shared_parameters"]) == ["trunk.weight", "trunk.bias"]
    out.to_netcdf(tmp_path / "a.nc", engine="h5netcdf")  # every attr is netCDF-safe
    back = xr.load_dataset(tmp_path / "a.nc", engine="h5netcdf")
    assert back.attrs["source_config"] == ensemble.attrs["config"]


def test_analysis_of_an_analysis_keeps_the_original_data_provenance(ensemble) -> None:
    first = oscillation(ensemble, window=8)
    merged = xr.merge([ensemble, first[["osc_amplitude"]]]).assign_attrs(first.attrs)
    merged = merged.isel({STEP: slice(7, None)})  # the first full window onwards
    second = sensing(merged, variable="osc_amplitude", window=8, n_permutations=39, n_boot=49)
    assert second.attrs["source_config"] == ensemble.attrs["config"]  # the recording's
    assert second.attrs["strategy"] == ensemble.attrs["strategy"]
    assert second.attrs["source_analysis"] == first.attrs["analysis"]
    assert second.attrs["analysis"].startswith("sensing(variable='osc_amplitude', window=8")
    assert second.attrs["history"].split("\n")[-2:] == [
        first.attrs["history"].split("\n")[-1],
        second.attrs["history"].split("\n")[-1],
    ]


def test_arrays_without_a_source_get_the_analysis_provenance_only(ensemble) -> None:
    bare = ensemble.copy()
    bare.attrs = {}
    out = correlate(bare["loss_a"], bare["loss_b"], [SEED, STEP], n_boot=49)
    assert set(out.attrs) == {
        *provenance({}),
        "analysis",
        "method",
    }
    assert out.attrs["analysis"] == (
        "correlate(dims='seed,step', serial='', detrend='', n_boot=49, n_permutations=0, "
        "alpha=0.05, control='')"
    )


def test_derive_by_hand() -> None:
    """The rules of ``derive`` on a small case written out in full."""
    source = {
        "history": "t0: made\nt1: cleaned",
        "config": '{"lr": 1}',
        "strategy": "rows",
        "method": "vmap",
        "Conventions": "CF-1.10",
        "numbers": np.array([1, 2]),
    }
    own = {"history": "t2: analysed", "config": '{"window": 3}', "Conventions": "CF-1.10"}
    assert derive(source, own) == {
        "history": "t0: made\nt1: cleaned\nt2: analysed",
        "config": '{"window": 3}',
        "source_config": '{"lr": 1}',
        "strategy": "rows",
        "source_method": "vmap",
        "Conventions": "CF-1.10",
        "numbers": source["numbers"],
    }
    assert derive({}, own) == own
    assert derive(source, {"numbers": np.array([1, 2, 3])})["source_numbers"] is source["numbers"]


def test_competition_keeps_the_recording_provenance() -> None:
    rec = recording(units=True)
    out = competition(rec, layer="trunk")
    for key in ("strategy", "shared_parameters", "layer_members", "schedule"):
        assert out.attrs[key] == rec.attrs[key], key
    assert out.attrs["source_config"] == rec.attrs["config"]
    assert json.loads(out.attrs["config"])["analysis"] == "competition"
    assert out.attrs["analysis"] == "competition(layer='trunk', min_share=None)"
    first, last = out.attrs["history"].split("\n")
    assert first == rec.attrs["history"] and last.endswith("gradcomp.graph.competition.competition")
