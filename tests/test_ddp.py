"""The recorder under DistributedDataParallel: 2 CPU processes on gloo against one process on the
concatenated batch (statistics, losses and trained parameters equal; only rank 0 writes)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import xarray as xr
from torch import nn

import gradcomp
from gradcomp.scaleout.ddp import mean_all_reduce, record_ddp

STEPS, LR, WORLD = 3, 0.2, 2


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Linear(3, 5)
        self.head_a = nn.Linear(5, 1)
        self.head_b = nn.Linear(5, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(self.trunk(x))
        return self.head_a(h).squeeze(-1), self.head_b(h).squeeze(-1)


def problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(1)
    model = TwoHeads().double()
    x = torch.randn(8, 3, generator=g, dtype=torch.float64)
    ya = torch.randn(8, generator=g, dtype=torch.float64)
    yb = torch.randn(8, generator=g, dtype=torch.float64)
    return model, x, ya, yb


def train(model, x, ya, yb, rec) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    with rec:
        for _ in range(STEPS):
            opt.zero_grad()
            pa, pb = model(x)
            rec.backward({"A": ((pa - ya) ** 2).mean(), "B": ((pb - yb) ** 2).mean()})
            opt.step()


def _worker(rank: int, port: int, out: str) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model, x, ya, yb = problem()
        rows = slice(rank * 4, rank * 4 + 4)
        ddp = nn.parallel.DistributedDataParallel(model)
        rec = record_ddp(ddp, ["A", "B"], path=os.path.join(out, "rec.nc"))
        train(ddp, x[rows], ya[rows], yb[rows], rec)
        rec.flush()  # a no-op on rank 1
        ds = rec.to_dataset()
        ds.attrs = {}
        ds.to_netcdf(os.path.join(out, f"test_rank{rank}.nc"), engine="h5netcdf")
        torch.save(
            {"params": model.state_dict(), "path": str(rec.path)},
            os.path.join(out, f"test_rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ddp_statistics_equal_single_process_on_the_global_batch(tmp_path) -> None:
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    model, x, ya, yb = problem()
    rec = gradcomp.record(model, ["A", "B"])
    train(model, x, ya, yb, rec)
    ref = rec.to_dataset()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "rec.nc", "test_rank0.nc", "test_rank0.pt", "test_rank1.nc", "test_rank1.pt",
    ]  # fmt: skip
    for rank in range(WORLD):
        got = xr.open_dataset(tmp_path / f"test_rank{rank}.nc", engine="h5netcdf").load()
        assert [str(v).removeprefix("module.") for v in got.layer.values] == list(ref.layer.values)
        got = got.assign_coords(layer=ref.layer)
        for var in ("loss", "gram", "grad_norm", "cosine"):
            xr.testing.assert_allclose(got[var], ref[var], rtol=1e-12, atol=1e-14)
        state = torch.load(tmp_path / f"test_rank{rank}.pt")
        for name, p in model.state_dict().items():
            torch.testing.assert_close(state["params"][name], p, rtol=1e-12, atol=1e-14)
        assert state["path"] == (str(tmp_path / "rec.nc") if rank == 0 else "None")
    written = xr.open_dataset(tmp_path / "rec.nc", engine="h5netcdf").load()
    xr.testing.assert_allclose(written["gram"].assign_coords(layer=ref.layer), ref["gram"])
    # the DDP statistics are not those of one rank's half batch (the test can fail)
    half = gradcomp.record(problem()[0], ["A", "B"])
    train(half.model, x[:4], ya[:4], yb[:4], half)
    assert not bool((half.to_dataset()["gram"] == ref["gram"]).all())


def test_ddp_helpers_refuse_misuse() -> None:
    if dist.is_initialized():  # pragma: no cover
        pytest.skip("a process group is already initialised")
    with pytest.raises(RuntimeError, match="init_process_group"):
        mean_all_reduce()
    with pytest.raises(RuntimeError, match="init_process_group"):
        record_ddp(TwoHeads(), ["A", "B"])
