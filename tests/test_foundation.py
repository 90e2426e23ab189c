"""The package skeleton: lazy top-level names, schedules, labels, provenance."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

import gradcomp
from gradcomp import dims
from gradcomp.provenance import provenance
from gradcomp.schedule import as_schedule, linear, logarithmic


def test_linear_schedule() -> None:
    s = linear(4, offset=1)
    assert [t for t in range(12) if s(t)] == [1, 5, 9]
    with pytest.raises(ValueError, match="positive"):
        linear(0)


def test_logarithmic_schedule_is_sparse_and_includes_ends() -> None:
    s = logarithmic(1, 1000, num=10)
    steps = [t for t in range(1001) if s(t)]
    assert steps[0] == 0 and steps[1] == 1 and steps[-1] == 1000
    assert len(steps) <= 11
    assert np.all(np.diff(steps) > 0)


def test_as_schedule_rejects_bad_input() -> None:
    assert as_schedule(3)(6) and not as_schedule(3)(7)
    with pytest.raises(TypeError):
        as_schedule(True)
    with pytest.raises(TypeError):
        as_schedule("often")  # type: ignore[arg-type]


def test_annotate_and_require() -> None:
    ds = xr.Dataset(
        {"loss": ("step", [1.0, 2.0]), "mine": ("step", [0, 1])}, coords={"step": [0, 1]}
    )
    dims.annotate(ds, {"mine": ("my quantity", "m")})
    assert ds["loss"].attrs["long_name"] == "task loss"
    assert ds["mine"].attrs["units"] == "m"
    assert ds["step"].attrs["units"] == "1"  # UDUNITS: a step index is dimensionless
    with pytest.raises(ValueError, match=r"'gram'.*units=True"):
        dims.require(ds, ["loss", "gram"], hint="units=True")


def test_provenance_is_netcdf_safe() -> None:
    attrs = provenance({"lr": 0.5, "widths": [1, 2]})
    assert all(type(v) is str for v in attrs.values())  # not str subclasses such as TorchVersion
    assert json.loads(attrs["config"]) == {"lr": 0.5, "widths": [1, 2]}
    assert attrs["gradcomp_version"] == gradcomp.__version__


def test_lazy_names() -> None:
    assert "record" in dir(gradcomp)
    with pytest.raises(AttributeError):
        gradcomp.does_not_exist  # noqa: B018
