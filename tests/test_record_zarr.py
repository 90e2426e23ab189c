"""Recordings flushed to a Zarr store: appended along ``step``, equal to the in-memory recording,
resumed by a new recorder on the same path, and cut back to the committed steps after a crash."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import xarray as xr
import zarr
from torch import Tensor, nn

import gradcomp
from gradcomp.recorder import io as rec_io

TASKS = ["a", "b"]
X = torch.randn(8, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
Y = torch.randn(8, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


def _model(width: int = 5) -> nn.ModuleDict:
    torch.manual_seed(0)
    return nn.ModuleDict(
        {
            "trunk": nn.Sequential(
                nn.Linear(4, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh()
            ),
            "heads": nn.ModuleDict({t: nn.Linear(width, 1) for t in TASKS}),
        }
    ).double()


def _losses(m: nn.Module) -> dict[str, Tensor]:
    h = m["trunk"](X)
    return {t: ((m["heads"][t](h) - Y) ** 2).mean() for t in TASKS}


def _train(n_steps: int, m: nn.Module, opt: Any, **kw: Any) -> Any:
    with gradcomp.record(m, TASKS, units=True, store="full", **kw) as rec:
        for _ in range(n_steps):
            opt.zero_grad()
            rec.backward(_losses(m))
            opt.step()
    return rec


def _same(a: xr.Dataset, b: xr.Dataset) -> None:
    """Identical but for ``history``, which stamps the second each Dataset was built."""
    a, b = a.copy(), b.copy()
    for ds in (a, b):
        assert ds.attrs.pop("history").startswith("20")
    xr.testing.assert_identical(a, b)


def _open(path: Path) -> xr.Dataset:
    with xr.open_zarr(path, consolidated=True, chunks=None) as ds:
        return ds.load()


def test_zarr_flushes_equal_the_in_memory_recording(tmp_path: Path) -> None:
    m = _model()
    ref = _train(17, m, torch.optim.SGD(m.parameters(), lr=0.05))
    m = _model()
    rec = _train(17, m, torch.optim.SGD(m.parameters(), lr=0.05), path=tmp_path / "r.zarr",
                 flush_every=3)  # fmt: skip
    want = ref.to_dataset()
    assert want.gram.dtype == np.float64
    _same(rec.to_dataset(), want)  # read back + nothing held: exact
    back = _open(tmp_path / "r.zarr")
    _same(back, want)
    # the store was appended to (6 flushes), not rewritten: the first steps' chunk is untouched
    assert json.loads((tmp_path / "r.zarr" / "gradcomp.json").read_text()) == {"steps": 17}
    # exports: the whole recording, to netCDF and to another Zarr store
    rec.flush(tmp_path / "all.nc")
    with xr.open_dataset(tmp_path / "all.nc", engine="h5netcdf") as nc:
        _same(nc.load(), want)
    rec.flush(tmp_path / "copy.zarr")
    _same(_open(tmp_path / "copy.zarr"), want)


def test_each_flush_writes_only_the_new_steps(tmp_path: Path, monkeypatch) -> None:
    from gradcomp.recorder import core

    written: list[tuple[int, int]] = []
    real = rec_io._append_arrays

    def spy(ds: xr.Dataset, target: Path, n_before: int) -> None:
        written.append((n_before, ds.sizes["step"]))
        real(ds, target, n_before)

    monkeypatch.setattr(rec_io, "_append_arrays", spy)
    m = _model()
    _train(10, m, torch.optim.SGD(m.parameters(), lr=0.05), path=tmp_path / "r.zarr",
           flush_every=4)  # fmt: skip
    assert written == [(4, 4), (8, 2)]  # the first flush creates the store with steps 0-3
    assert core.append_zarr is rec_io.append_zarr
    assert _open(tmp_path / "r.zarr").step.values.tolist() == list(range(10))


def test_a_resumed_recording_appends(tmp_path: Path) -> None:
    path = tmp_path / "r.zarr"
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    ref = _train(12, m, opt)  # uninterrupted
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    _train(7, m, opt, path=path, flush_every=2)
    rec = _train(5, m, opt, path=path, flush_every=2)  # a new recorder: the resumed run
    got = rec.to_dataset()
    assert got.step.values.tolist() == list(range(12))
    for var in ("loss", "gram", "unit_gram", "grad", "cosine"):
        xr.testing.assert_identical(got[var], ref.to_dataset()[var])
    _same(_open(path)[["gram", "loss"]], got[["gram", "loss"]])
    # explicit steps must continue after the stored ones
    with pytest.raises(ValueError, match="does not follow the previous step 11"):
        with gradcomp.record(m, TASKS, units=True, store="full", path=path) as r:
            r.backward(_losses(m), step=3)
    # another recording (other variables) in the same store is refused, not mixed in
    with pytest.raises(ValueError, match="holds another recording"):
        with gradcomp.record(m, TASKS, path=path) as r:
            r.backward(_losses(m))
    assert rec_io.zarr_steps(path) == (12, 11)


def test_a_crash_mid_append_is_cut_back_to_the_committed_steps(tmp_path: Path) -> None:
    path = tmp_path / "r.zarr"
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    first = _train(4, m, opt, path=path, flush_every=2).to_dataset()
    # a crash after one array was extended and before the step count was committed
    arr = zarr.open_array(path / "loss", mode="r+")
    arr.resize((9, *arr.shape[1:]))
    rec = _train(3, m, opt, path=path, flush_every=2)
    got = rec.to_dataset()
    assert got.step.values.tolist() == list(range(7))
    _same(got.isel(step=slice(0, 4))[["loss", "gram"]], first[["loss", "gram"]])
    back = _open(path)
    assert back.sizes["step"] == 7 and back.loss.shape[0] == 7
