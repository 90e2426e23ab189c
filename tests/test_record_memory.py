"""Memory is bounded: with ``path=`` flushed steps leave memory; flushing changes no number."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest
import torch
import xarray as xr
from torch import Tensor, nn

import gradcomp

TASKS = ["a", "b"]
X = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
Y = torch.randn(8, 1, generator=torch.Generator().manual_seed(2))


def _model(width: int = 16) -> nn.ModuleDict:
    torch.manual_seed(0)
    return nn.ModuleDict(
        {
            "trunk": nn.Sequential(
                nn.Linear(4, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh()
            ),
            "heads": nn.ModuleDict({t: nn.Linear(width, 1) for t in TASKS}),
        }
    )


def _losses(m: nn.Module) -> dict[str, Tensor]:
    h = m["trunk"](X)
    return {t: ((m["heads"][t](h) - Y) ** 2).mean() for t in TASKS}


def _per_step_bytes(n_tasks: int, n_layers: int, n_units: int) -> int:
    """docs/record.md: 8 bytes × (step + T losses + (L+1)·T² Gram + (L+1)·U·T² unit Gram)."""
    t, lp1 = n_tasks, n_layers + 1
    return 8 * (1 + t + lp1 * t * t + lp1 * n_units * t * t)


def test_memory_without_path_is_the_recording_size() -> None:
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    with gradcomp.record(m, TASKS, units=True) as rec:
        for n in range(1, 31):
            opt.zero_grad()
            rec.backward(_losses(m))
            opt.step()
            assert rec.nbytes == n * _per_step_bytes(2, 2, 16)
    ds = rec.to_dataset()
    held = sum(ds[v].nbytes for v in ("loss", "gram", "unit_gram")) + ds.step.nbytes
    assert rec.nbytes == held


def _flushed_run(n_steps: int, flush_every: int, path: Path) -> tuple[Any, list[int], list[int]]:
    """Record ``n_steps`` with ``path=``; the bytes held after every step, and the number of
    gc-tracked objects right after each flush."""
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    held, objects = [], []
    with gradcomp.record(m, TASKS, units=True, path=path, flush_every=flush_every) as rec:
        for n in range(1, n_steps + 1):
            opt.zero_grad()
            rec.backward(_losses(m))
            opt.step()
            held.append(rec.nbytes)
            if n % flush_every == 0 and n >= 2 * flush_every:
                gc.collect()
                objects.append(len(gc.get_objects()))
    return rec, held, objects


def _check_flat(rec: Any, held: list[int], objects: list[int], flush_every: int) -> None:
    per_step = _per_step_bytes(2, 2, 16)
    # the stated bound: at most flush_every - 1 steps are held between flushes, whatever the length
    assert max(held) <= (flush_every - 1) * per_step
    assert held == [(n % flush_every) * per_step for n in range(1, len(held) + 1)]
    # no Python object kept per step: hundreds of steps between these counts, so a leak of one
    # object a step shows as growth of hundreds; the count may fall once while the I/O stack's
    # caches settle in a long test session, but it must not end above its lowest by much
    assert objects[-1] - min(objects) < 200
    assert rec.nbytes == 0  # flushed on exit
    on_file = xr.open_dataset(rec.path, engine="h5netcdf")
    assert on_file.sizes["step"] == len(held)
    assert on_file.step.values.tolist() == list(range(len(held)))
    on_file.close()


def test_flushed_steps_leave_memory(tmp_path: Path) -> None:
    rec, held, objects = _flushed_run(800, 100, tmp_path / "run.nc")
    _check_flat(rec, held, objects, 100)


@pytest.mark.slow
def test_flushed_steps_leave_memory_over_20000_steps(tmp_path: Path) -> None:
    rec, held, objects = _flushed_run(20_000, 1000, tmp_path / "run.nc")
    _check_flat(rec, held, objects, 1000)


@pytest.mark.parametrize("every", [1, 3])
def test_flush_equals_the_unflushed_recording(tmp_path: Path, every: int) -> None:
    """Appending flushes, reading back and the tail held in memory change no number (rtol 0)."""
    kw: dict[str, Any] = {"units": True, "store": "full", "every": every}
    runs = {}
    for name, extra in (("memory", {}), ("file", {"path": tmp_path / "r.nc", "flush_every": 2})):
        m = _model(width=5)
        opt = torch.optim.SGD(m.parameters(), lr=0.05)
        with gradcomp.record(m, TASKS, **kw, **extra) as rec:
            for step in range(17):  # an odd count: a tail stays in memory between flushes
                opt.zero_grad()
                rec.backward(_losses(m))
                opt.step()
                if step == 10:
                    mid = rec.to_dataset()
                    rec.flush(tmp_path / f"{name}-mid.nc")  # another path: everything so far
                    held = rec.nbytes
            before_exit = rec.to_dataset()
        runs[name] = (rec, mid, before_exit, held)
    ref_rec, ref_mid, ref_end, ref_held = runs["memory"]
    rec, mid, end, held = runs["file"]
    assert held <= ref_held / 4  # at most one step held against all of them

    def same(x: xr.Dataset, y: xr.Dataset) -> None:  # but for the time stamp of each build
        xr.testing.assert_identical(x.assign_attrs(history=None), y.assign_attrs(history=None))

    same(mid, ref_mid)
    same(end, ref_end)
    same(rec.to_dataset(), ref_rec.to_dataset())
    for name in ("memory-mid.nc", "file-mid.nc"):
        with xr.open_dataset(tmp_path / name, engine="h5netcdf") as back:
            same(back.load(), ref_mid)
    with xr.open_dataset(tmp_path / "r.nc", engine="h5netcdf") as back:
        same(back.load(), ref_end)
        assert back.attrs.keys() == ref_end.attrs.keys()


def test_a_file_changed_behind_the_recorder_is_named(tmp_path: Path) -> None:
    m = _model()
    path = tmp_path / "r.nc"
    rec = gradcomp.record(m, TASKS, path=path, flush_every=2)
    with pytest.raises(ValueError, match=r"r.nc \(where .*no longer exists"):
        with rec:  # the flush on exit names the missing file
            for _ in range(3):
                rec.backward(_losses(m))
            path.unlink()
            with pytest.raises(ValueError, match="no longer exists"):
                rec.to_dataset()
