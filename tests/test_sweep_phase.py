"""The phase-diagram analysis and figure scripts run end to end on a tiny grid."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import xarray as xr

pytest.importorskip("distributed")

ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem + "_script", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_phase_diagram_scripts_tiny(tmp_path) -> None:
    analysis = _load(ROOT / "analyses" / "phase_diagram.py")
    out = tmp_path / "pd.nc"
    assert analysis.main(["--tiny", "--out", str(out), "--store", str(tmp_path / "store")]) == 0
    est = xr.open_dataset(out, engine="h5netcdf").load()
    assert dict(est.S.sizes) == {"width": 2, "lr": 2}
    assert {"S_lo", "S_hi", "cbd_margin", "delta"} <= set(est.data_vars)
    assert int(est.n_seeds.min()) == 32 and est.attrs["seeds_per_cell"] == 32
    assert (est.S_lo <= est.S).all() and (est.S <= est.S_hi).all()
    figure = _load(ROOT / "figures" / "phase_diagram.py")
    png = tmp_path / "pd.png"
    assert figure.main(["--data", str(out), "--out", str(png), "--tiny"]) == 0
    assert png.stat().st_size > 1000
