"""The phase-diagram analysis and figure scripts run end to end on a tiny grid."""

from __future__ import annotations

import pytest
import xarray as xr
from _scripts import load_script

pytest.importorskip("distributed")


def test_phase_diagram_scripts_tiny(tmp_path) -> None:
    analysis = load_script("analyses/phase_diagram.py")
    out = tmp_path / "pd.nc"
    assert analysis.main(["--tiny", "--out", str(out), "--store", str(tmp_path / "store")]) == 0
    est = xr.open_dataset(out, engine="h5netcdf").load()
    assert dict(est.S.sizes) == {"width": 2, "lr": 2}
    assert {"S_lo", "S_hi", "cbd_margin", "delta"} <= set(est.data_vars)
    assert int(est.n_seeds.min()) == 32 and est.attrs["seeds_per_cell"] == 32
    assert (est.S_lo <= est.S).all() and (est.S <= est.S_hi).all()
    figure = load_script("figures/phase_diagram.py")
    png = tmp_path / "pd.png"
    assert figure.main(["--data", str(out), "--out", str(png), "--tiny"]) == 0
    assert png.stat().st_size > 1000
