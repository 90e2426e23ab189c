"""Compact NCnet files: one layer, int8 outcomes, gzip; saved and reopened identical."""

from __future__ import annotations

from pathlib import Path

import h5py
import matplotlib
import numpy as np
import pytest
import xarray as xr

from gradcomp import chsh, dims, ncnet
from gradcomp._encoding import OUTCOME_FILL, encoding_for, is_outcome
from gradcomp.analyze import conflict
from gradcomp.ncnet._experiment import capacity

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def small() -> xr.Dataset:
    cfg = ncnet.NCnetConfig(steps=60, units=True, holdout=1)
    return capacity(cfg, [1, 2, 3], 16, n_boot=50, progress=False)


def _reopen(ds: xr.Dataset, path: Path, keep_bits: int | None = None) -> xr.Dataset:
    ncnet.save(ds, path, keep_bits=keep_bits)
    return ncnet.open_dataset(path)


def test_one_layer_that_is_also_all(small: xr.Dataset) -> None:
    assert small.layer.values.tolist() == ["hidden"]
    assert dims.layer(small, "all") == "hidden" and dims.layer(small, "hidden") == "hidden"
    rec = xr.Dataset(coords={"layer": ["fc", "all"]})
    assert dims.layer(rec, "all") == "all"
    from matplotlib import pyplot as plt

    from gradcomp.plot.record import grad_norm_over_steps

    fig, ax = plt.subplots()
    grad_norm_over_steps(small.isel(width=1, seed=0, alice=0, bob=0), ax)  # layer "all"
    plt.close(fig)


def test_save_and_open_give_the_same_dataset(small: xr.Dataset, tmp_path: Path) -> None:
    back = _reopen(small, tmp_path / "s.nc")
    xr.testing.assert_identical(back, small)
    for name, var in small.variables.items():
        assert back[name].dtype == var.dtype, name
    # the outcomes as plain xarray reads them: the same float32 values
    with xr.open_dataset(tmp_path / "s.nc", engine="h5netcdf") as raw:
        for v in ("a", "b", "unshared_a", "unshared_b", "diverged", "loss", "acc"):
            xr.testing.assert_identical(raw[v].load(), small[v])
        assert "cosine" not in raw and "grad_norm" not in raw and "gram" not in raw
        tri = raw["gram_triu"].load()  # the upper triangle of the symmetric T x T Gram
        assert tri.sizes["task_pair"] == 3
        np.testing.assert_array_equal(tri.values[..., 1], small.gram.values[..., 0, 1])
    # what the figure and the analyzers compute from it does not change
    last = {"step": -1}
    est0 = chsh.estimate(small.a.isel(last), small.b.isel(last), n_boot=100)
    est1 = chsh.estimate(back.a.isel(last), back.b.isel(last), n_boot=100)
    xr.testing.assert_identical(est0, est1)
    xr.testing.assert_identical(conflict(small), conflict(back))


def test_rounded_traces_keep_their_stated_tolerance(small: xr.Dataset, tmp_path: Path) -> None:
    """The default file rounds loss and Gram mantissas (relative error ≤ 2^-(k+1)), nothing else."""
    back = _reopen(small, tmp_path / "r.nc", keep_bits=ncnet.KEEP_BITS)
    tol = 2.0 ** -(ncnet.KEEP_BITS + 1)
    for v in ("loss", "gram", "unit_gram"):
        x, y = small[v].values.astype(np.float64), back[v].values.astype(np.float64)
        np.testing.assert_array_equal(np.isnan(x), np.isnan(y))
        ok = np.isfinite(x)
        assert np.all(np.abs(y[ok] - x[ok]) <= tol * np.abs(x[ok])), v
        assert not np.array_equal(x[ok], y[ok])  # it did round: the test can fail
        assert back[v].attrs["_QuantizeBitRoundNumberOfSignificantBits"] == ncnet.KEEP_BITS
    exact = [
        v for v in small.data_vars if v not in ("loss", "gram", "unit_gram", "cosine", "grad_norm")
    ]
    xr.testing.assert_equal(back[exact], small[exact])
    # cosines move by at most ~3 relative tolerances
    np.testing.assert_allclose(back.cosine, small.cosine, rtol=0, atol=4 * tol)
    with pytest.raises(ValueError, match="keep_bits"):
        ncnet.save(small, tmp_path / "bad.nc", keep_bits=24)


def test_bit_round_against_a_float64_reference() -> None:
    from gradcomp._encoding import bit_round

    rng = np.random.default_rng(1)
    x = (rng.standard_normal(20000) * 10.0 ** rng.integers(-20, 20, 20000)).astype(np.float32)
    for k in (1, 4, 11, 22):
        y = bit_round(x, k)
        # reference: round x to k mantissa bits in float64 (ties to even), then to float32
        e = np.floor(np.log2(np.abs(x.astype(np.float64))))
        q = 2.0 ** (e - k)
        ref = (np.round(x.astype(np.float64) / q) * q).astype(np.float32)
        np.testing.assert_array_equal(y, ref)
    np.testing.assert_array_equal(bit_round(x, 23), x)
    special = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, np.finfo(np.float32).max], np.float32)
    np.testing.assert_array_equal(bit_round(special, 3), special)


def test_nan_outcomes_of_diverged_runs_survive(tmp_path: Path) -> None:
    cfg = ncnet.NCnetConfig(activation="relu", lr=1e15, steps=12, trace_every=3, dtype="float64")
    ds = ncnet.run(cfg, [2, 3], 8, progress=False, engine="torch")
    assert ds.diverged.any() and np.isnan(ds.a).any() and (ds.a == 1).any()
    back = _reopen(ds, tmp_path / "d.nc")
    xr.testing.assert_identical(back, ds)
    np.testing.assert_array_equal(np.isnan(back.a), ds.diverged)


def test_default_encoding_is_pinned(small: xr.Dataset, tmp_path: Path) -> None:
    """What keeps ``gradcomp ncnet``'s file small: int8 outcomes, bool flags, gzip + shuffle."""
    enc = encoding_for(small)
    for v in ("a", "b", "unshared_a", "unshared_b"):
        assert enc[v]["dtype"] == "int8" and enc[v]["_FillValue"] == OUTCOME_FILL == 0
    for v, var in small.data_vars.items():
        if var.ndim:
            assert enc[v]["compression"] == "gzip" and enc[v]["compression_opts"] == 4
            assert enc[v]["shuffle"] is True
    ncnet.save(small, tmp_path / "s.nc")
    with h5py.File(tmp_path / "s.nc") as f:
        assert f["a"].dtype == np.int8 and f["b"].dtype == np.int8
        assert f["diverged"].dtype == np.int8
        assert f["gram_triu"].dtype == np.float32 and f["loss"].dtype == np.float32
        assert f["gram_triu"].shape[5] == 1  # one layer
        for v in ("a", "gram_triu", "loss", "acc", "unit_gram_triu"):
            assert f[v].compression == "gzip" and f[v].shuffle and f[v].compression_opts == 4
        assert "cosine" not in f and "grad_norm" not in f
        # the per-run traces take less than half their size in memory (0.43 here; 0.31 at the
        # default run, where int8 outcomes and compression weigh more than the NaN-padded units)
        runs = [v for v in small.data_vars if "seed" in small[v].dims]
        stored = sum(f[v].id.get_storage_size() for v in runs if v in f)
        assert stored < sum(small[v].nbytes for v in runs) / 2


def test_outcome_detection_and_engines() -> None:
    ds = xr.Dataset(
        {
            "o": ("x", np.array([1, -1, np.nan], np.float32)),
            "o64": ("x", np.array([1, -1, 1], np.float64)),  # would come back float32
            "f": ("x", np.array([1, 0, -1], np.float32)),
            "n": ("x", np.array([np.nan] * 3, np.float32)),
        }
    )
    assert [is_outcome(ds[v]) for v in ds] == [True, False, False, True]
    assert encoding_for(ds, engine="zarr") == {
        "o": {"dtype": "int8", "_FillValue": OUTCOME_FILL},
        "n": {"dtype": "int8", "_FillValue": OUTCOME_FILL},
    }
    with pytest.raises(ValueError, match="engine"):
        encoding_for(ds, engine="netcdf4")


def test_old_files_without_the_mark_open_as_they_are(small: xr.Dataset, tmp_path: Path) -> None:
    small.to_netcdf(tmp_path / "old.nc", engine="h5netcdf")
    xr.testing.assert_identical(ncnet.open_dataset(tmp_path / "old.nc"), small)
