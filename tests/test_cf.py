"""CF 1.10 metadata that a checker accepts, on every kind of Dataset gradcomp makes: a recording, a
CHSH estimate, an analyzer's output, an NCnet run (and its netCDF file), a LoRA run.

Checked with cf_xarray (associated variables, flags) and a UDUNITS check of every ``units``: with
``cf_units`` when it is installed, else against the UDUNITS-2 names gradcomp uses.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

import gradcomp
from gradcomp import chsh
from gradcomp._cf import COMPANIONS, link
from gradcomp.analyze import conflict
from gradcomp.ncnet import NCnetConfig
from gradcomp.ncnet._experiment import capacity
from gradcomp.provenance import LIBRARIES

cf_xarray = pytest.importorskip("cf_xarray")

try:
    import cf_units
except ImportError:  # the C library UDUNITS-2 is not always at hand
    cf_units = None

#: unit names (UDUNITS-2 common and accepted units) that gradcomp may use
UDUNITS_NAMES = {"1", "bit", "s", "second", "count", "percent", "cycle"}
_TOKEN = re.compile(r"(?P<name>[A-Za-z]+|1)(?:\^?-?\d+)?$")


def udunits(units: str) -> bool:
    """Whether UDUNITS-2 parses ``units`` (``cf_units`` if installed, else a strict subset: names
    of :data:`UDUNITS_NAMES` with integer powers, joined by ``/``, ``.``, ``*`` or spaces)."""
    if cf_units is not None:
        try:
            cf_units.Unit(units)
        except ValueError:
            return False
        return True
    tokens = [t for t in re.split(r"\s*[/.*]\s*|\s+", units.strip()) if t]
    if not tokens or not units.isascii():
        return False
    for token in tokens:
        m = _TOKEN.match(token)
        if m is None or m["name"] not in UDUNITS_NAMES:
            return False
    return True


@pytest.mark.parametrize("good", ["1", "bit", "s", "s-1", "count / s", "bit.s^-1"])
def test_units_check_accepts(good) -> None:
    assert udunits(good)


@pytest.mark.parametrize(
    "bad", ["loss² / param²", "units", "cycles / step", "traced steps", "step", "loss", ""]
)
def test_units_check_refuses_what_gradcomp_had(bad) -> None:
    assert not udunits(bad)


def check_cf(ds: xr.Dataset) -> None:
    """What a CF checker asks of a gradcomp Dataset."""
    assert ds.attrs["Conventions"] == "CF-1.10"
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ: gradcomp \S+ \S", ds.attrs["history"])
    for lib in LIBRARIES:
        assert ds.attrs[f"{lib}_version"] not in ("", "unknown"), lib
    for name, var in ds.variables.items():
        if var.dtype.kind in "OSU":  # labels (task, layer names): no units
            continue
        assert var.attrs.get("long_name"), name
        assert udunits(var.attrs.get("units", "")), (name, var.attrs.get("units"))
    names = set(map(str, ds.variables))
    for name, var in ds.data_vars.items():
        linked = var.attrs.get("ancillary_variables", "").split()
        assert set(linked) <= names, (name, linked)
        assert [f"{name}{s}" for s in COMPANIONS if f"{name}{s}" in names] == linked, name
        if "flag_values" in var.attrs:
            flags = np.asarray(var.attrs["flag_values"])
            assert flags.dtype == var.dtype, name
            assert len(var.attrs["flag_meanings"].split()) == flags.size, name
            values = np.unique(var.values[np.isfinite(var.values)])
            assert set(values) <= set(flags.tolist()), (name, values)
    ds.cf.keys()  # cf_xarray reads the Dataset without complaint
    assert "CF-1.10" in ds.attrs["Conventions"]


def check_estimate(ds: xr.Dataset, prefix: str = "") -> None:
    """``S`` (and the other estimates) point to their bounds; cf_xarray follows the link."""
    for est in ("S", "C", "delta", "cbd_margin"):
        name = prefix + est
        expected = {prefix + est + s for s in COMPANIONS} & set(ds.data_vars)
        assert {prefix + est + "_lo", prefix + est + "_hi"} <= expected
        assert set(ds.cf.get_associated_variable_names(name)["ancillary_variables"]) == expected
    assert ds[prefix + "S"].attrs["ancillary_variables"] == " ".join(
        prefix + s for s in ("S_se", "S_lo", "S_hi")
    )
    with_bounds = ds.cf[prefix + "S"]  # the bounds come along as coordinates
    assert {prefix + "S_lo", prefix + "S_hi"} <= set(with_bounds.coords)


def check_outcomes(ds: xr.Dataset, names=("a", "b")) -> None:
    for name in names:
        da = ds[name]
        assert list(da.attrs["flag_values"]) == [-1, 1]
        assert da.attrs["flag_meanings"] == "task_failed task_solved"
        solved = da.cf == "task_solved"  # cf_xarray decodes the flag
        np.testing.assert_array_equal(solved.values, (da == 1).values)


def _recording() -> xr.Dataset:
    torch.manual_seed(0)
    m = nn.ModuleDict(
        {"trunk": nn.Linear(3, 4), "heads": nn.ModuleDict({t: nn.Linear(4, 1) for t in "ab"})}
    ).double()
    x = torch.randn(6, 3, dtype=torch.float64)
    with gradcomp.record(m, ["a", "b"], units=True) as rec:
        for _ in range(4):
            h = torch.tanh(m["trunk"](x))
            rec.backward({t: m["heads"][t](h).pow(2).mean() for t in "ab"})
    return rec.to_dataset()


def test_recording_and_an_analysis() -> None:
    ds = _recording()
    check_cf(ds)
    assert "gradcomp.recorder" in ds.attrs["history"]
    out = conflict(ds, window=2)
    check_cf(out)
    assert out.attrs["history"].endswith("gradcomp.analyze.conflict")
    assert '"analyzer": "conflict"' in out.attrs["config"]


def test_chsh_estimate() -> None:
    rng = np.random.default_rng(0)
    a = np.where(rng.random((40, 2, 2)) < 0.7, 1.0, -1.0)
    b = np.where(rng.random((40, 2, 2)) < 0.4, 1.0, -1.0)
    est = chsh.estimate(a, b)
    check_cf(est)
    check_estimate(est)
    assert est.attrs["history"].endswith("gradcomp.chsh.estimate")


def test_ncnet_run_and_its_file(tmp_path) -> None:
    config = NCnetConfig(steps=4, trace_every=(0, 4))
    ds = capacity(config, [2], 6, n_boot=20, progress=False)
    check_cf(ds)
    check_estimate(ds)
    check_estimate(ds, prefix="unshared_")
    check_outcomes(ds, ("a", "b", "unshared_a", "unshared_b"))
    assert ds.a.dtype == np.float32 and ds.a.attrs["flag_values"].dtype == np.float32
    ds.to_netcdf(tmp_path / "n.nc", engine="h5netcdf")
    back = xr.load_dataset(tmp_path / "n.nc", engine="h5netcdf")
    check_cf(back)
    check_outcomes(back)


def test_link_drops_a_dangling_ancillary_link() -> None:
    ds = xr.Dataset({"x": ("i", [1.0]), "y": ("i", [2.0])})
    ds["x"].attrs["ancillary_variables"] = "gone"  # inherited through arithmetic
    ds["y"].attrs["ancillary_variables"] = "x"  # a link of the user's own: kept
    link(ds)
    assert "ancillary_variables" not in ds["x"].attrs
    assert ds["y"].attrs["ancillary_variables"] == "x"


def test_lora_run(tmp_path) -> None:
    """The LoRA CLI on the tiny setting: its two files pass the checks, and only the table of S
    per rank is on stdout."""
    pytest.importorskip("peft")
    pytest.importorskip("wordfreq")
    import contextlib
    import io

    from gradcomp.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv = ["lora", "--tiny", "--ranks", "1", "--steps", "2", "--n-boot", "99",
            "--threshold", "0.6", "--out", str(tmp_path)]  # fmt: skip
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert main(argv) == 0, err.getvalue()
    lines = out.getvalue().strip().splitlines()
    assert lines[0].split() == [
        "adapters", "rank", "seeds", "S", "S_lo", "S_hi", "delta", "margin", "held-out", "acc"
    ]  # fmt: skip
    assert [line.split()[:2] for line in lines[1:]] == [["shared", "1"], ["separate", "1"]]
    assert "wrote" in err.getvalue() and "method:" in err.getvalue()
    ds = xr.load_dataset(tmp_path / "lora_rank.nc", engine="h5netcdf")
    check_cf(ds)
    check_outcomes(ds)
    summary = xr.load_dataset(tmp_path / "lora_rank_summary.nc", engine="h5netcdf")
    check_cf(summary)
    assert summary["S"].attrs["ancillary_variables"].split()[-2:] == ["S_lo", "S_hi"]
    assert "(command: gradcomp lora --tiny" in summary.attrs["history"]
