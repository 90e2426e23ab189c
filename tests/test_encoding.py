"""The one on-disk encoding (gradcomp._encoding): recordings are compressed and read back exact."""

from __future__ import annotations

from pathlib import Path

import h5py
import torch
import xarray as xr
from torch import nn

import gradcomp


def test_flushed_recording_is_compressed_and_exact(tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = nn.ModuleDict({"trunk": nn.Linear(3, 6), "a": nn.Linear(6, 1), "b": nn.Linear(6, 1)})
    x = torch.randn(8, 3)
    path = tmp_path / "r.nc"
    with gradcomp.record(m, ["a", "b"], path=path, flush_every=2) as rec:
        for _ in range(5):
            h = m["trunk"](x).tanh()
            losses = {t: m[t](h).pow(2).mean() for t in ("a", "b")}
            rec.backward(losses)
    ds = rec.to_dataset()
    back = xr.load_dataset(path, engine="h5netcdf")
    xr.testing.assert_identical(back, ds)  # bit for bit: nothing is rounded
    with h5py.File(path) as f:
        for v in ("loss", "gram", "grad_norm", "cosine"):
            assert f[v].compression == "gzip" and f[v].compression_opts == 4 and f[v].shuffle
            assert f[v].dtype == ds[v].dtype
    rec.flush(tmp_path / "all.nc")  # the whole recording in one write: the same encoding
    with h5py.File(tmp_path / "all.nc") as f:
        assert f["gram"].compression == "gzip" and f["gram"].shuffle
