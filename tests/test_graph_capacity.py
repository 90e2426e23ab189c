"""Shared-channel capacity between two heads (NCnet, LoRA)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr

from gradcomp.graph import capacity_coord, lora_graph, ncnet_graph, shared_capacity


@pytest.mark.parametrize("width", [1, 2, 3, 4, 7])
def test_ncnet_shared_width(width) -> None:
    assert shared_capacity(ncnet_graph(width)) == width
    assert shared_capacity(ncnet_graph(width), unit="bits") == pytest.approx(math.log2(width))
    assert shared_capacity(ncnet_graph(width, shared=False)) == 0
    assert shared_capacity(ncnet_graph(width, shared=False), unit="bits") == 0


def test_lora_counts_only_adapters_both_heads_use() -> None:
    g = lora_graph(
        {"q": 4, "v": 2, "head_a": 8, "head_b": 16},
        {"q": "AB", "v": "AB", "head_a": "A", "head_b": "B"},
    )
    assert shared_capacity(g) == 6
    assert shared_capacity(g, unit="bits") == pytest.approx(3.0)
    assert shared_capacity(lora_graph({"x": 4}, {"x": "A"})) == 0
    assert shared_capacity(lora_graph({"q": 3, "v": 5})) == 8


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown heads"):
        lora_graph({"q": 4}, {"q": ["A", "C"]})
    with pytest.raises(ValueError, match="no head"):
        lora_graph({"q": 4}, {"q": []})
    with pytest.raises(ValueError, match="≥ 1"):
        ncnet_graph(0)
    with pytest.raises(ValueError, match="unit"):
        shared_capacity(ncnet_graph(2), unit="nats")


def test_capacity_coord(tmp_path) -> None:
    ds = xr.Dataset({"S": ("width", [1.5, 2.1, 2.0])}, coords={"width": [2, 3, 4]})
    coord = capacity_coord(ds)
    np.testing.assert_array_equal(coord.values, [2.0, 3.0, 4.0])
    out = ds.assign_coords(shared_capacity=coord)
    out.to_netcdf(tmp_path / "c.nc", engine="h5netcdf")
    back = xr.load_dataset(tmp_path / "c.nc", engine="h5netcdf")
    assert back["shared_capacity"].attrs["units"] == "1"  # a channel count (UDUNITS)
    unshared = ds.assign_attrs(unshared=1)  # as gradcomp.ncnet.run writes for the control
    np.testing.assert_array_equal(capacity_coord(unshared).values, [0.0, 0.0, 0.0])
    bits = capacity_coord(ds, unit="bits")
    np.testing.assert_allclose(bits.values, np.log2([2, 3, 4]), rtol=1e-12)
    lora = xr.Dataset(coords={"rank": [1, 4, 8]})
    with pytest.raises(ValueError, match="adapted_modules"):
        capacity_coord(lora)
    np.testing.assert_array_equal(capacity_coord(lora, adapted_modules=6).values, [6, 24, 48])
    recorded = lora.assign_coords(layer=["q0", "v0", "q1", "all"])  # as gradcomp.lora records
    np.testing.assert_array_equal(capacity_coord(recorded).values, [3, 12, 24])
    with pytest.raises(ValueError, match="neither"):
        capacity_coord(xr.Dataset(coords={"step": [0]}))
