"""``gradcomp report RUN``: a one-page PNG + PDF of a recording, an NCnet run and a LoRA run
(netCDF and Zarr), each figure opened and checked as an image; the panels draw the Dataset's own
numbers; bad input is one line on stderr and a non-zero exit."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from matplotlib.image import imread
from torch import nn

import gradcomp
from gradcomp.cli import main
from gradcomp.plot.report import figure, panels


def _recording() -> xr.Dataset:
    """A tiny two-head MLP recorded with units and rep_gram (strategy "features")."""
    torch.manual_seed(0)
    model = nn.ModuleDict(
        {"trunk": nn.Sequential(nn.Linear(3, 5), nn.Tanh()), "a": nn.Linear(5, 1),
         "b": nn.Linear(5, 1)}
    )  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, ya, yb = torch.randn(16, 3), torch.randn(16, 1), torch.randn(16, 1)
    with gradcomp.record(model, ["a", "b"], units=True, strategy="features") as rec:
        for _ in range(12):
            h = model["trunk"](x)
            losses = {
                "a": nn.functional.mse_loss(model["a"](h), ya),
                "b": nn.functional.mse_loss(model["b"](h), yb),
            }
            opt.zero_grad()
            rec.backward(losses, features=h)
            opt.step()
    return rec.to_dataset()


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rec") / "rec.nc"
    _recording().to_netcdf(path, engine="h5netcdf")
    return path


@pytest.fixture(scope="module")
def ncnet_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ncnet") / "n.nc"
    argv = ["ncnet", "--widths", "2", "--seeds", "6", "--steps", "12", "--n-boot", "20", "--units",
            "--no-control", "--no-progress", "--figure", "none", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> Path:
    """A LoRA ensemble at the smallest size (the library, as ``gradcomp lora --tiny`` runs it)."""
    from gradcomp.lora import LoraExperiment
    from gradcomp.lora import run as run_lora

    cfg = LoraExperiment.tiny(
        ranks=(1,), n_seeds=2, steps=2, every=1, per_language=8, threshold=0.6, control_seeds=0
    )
    out = tmp_path_factory.mktemp("lora") / "lora_rank.nc"
    run_lora(cfg).to_netcdf(out, engine="h5netcdf")
    return out


def _report(capsys, run: Path, prefix: Path, *extra: str) -> tuple[Path, Path]:
    capsys.readouterr()
    assert main(["report", str(run), "--out", str(prefix), *extra]) == 0
    captured = capsys.readouterr()
    assert "wrote" in captured.err and "Traceback" not in captured.err
    base = prefix.with_suffix("") if prefix.suffix in (".png", ".pdf") else prefix
    return base.with_name(base.name + ".png"), base.with_name(base.name + ".pdf")


def _check_image(png: Path, pdf: Path, n_panels: int, dpi: int = 150) -> None:
    img = imread(png)
    rows = (n_panels + 1) // 2
    # matplotlib < 3.8 truncates figsize x dpi instead of rounding: one pixel either way
    assert abs(img.shape[0] - dpi * (3.8 * rows + 0.6)) <= 1 and img.shape[1:] == (dpi * 12, 4)
    assert img[..., :3].std() > 0.05  # not blank
    assert (img[..., :3] < 0.5).mean() > 0.005  # ink: lines and text
    assert pdf.read_bytes()[:4] == b"%PDF"


def _axes(fig) -> dict[str, object]:
    return {ax.get_label()[6:]: ax for ax in fig.axes if ax.get_label().startswith("panel:")}


def test_recording_report(capsys, tmp_path, recording) -> None:
    with xr.open_dataset(recording, engine="h5netcdf") as ds:
        ds = ds.load()
    assert panels(ds) == ["loss", "cosine", "conflict", "units"]
    png, pdf = _report(capsys, recording, tmp_path / "rec")
    _check_image(png, pdf, 4)
    fig = figure(ds)
    axes = _axes(fig)
    assert list(axes) == ["loss", "cosine", "conflict", "units"]
    # the panels draw the Dataset's numbers
    loss = {ln.get_label(): ln.get_ydata() for ln in axes["loss"].lines}
    np.testing.assert_allclose(loss["a"], ds.loss.sel(task="a").values)
    cos = {ln.get_label(): ln.get_ydata() for ln in axes["cosine"].lines}
    np.testing.assert_allclose(cos["all"], ds.cosine.sel(layer="all", task="a", task_j="b"))
    g = ds.rep_gram.values
    rep = g[:, 0, 1] / np.sqrt(g[:, 0, 0] * g[:, 1, 1])
    np.testing.assert_allclose(cos["shared representation (rep_gram)"], rep, rtol=1e-12)
    assert axes["loss"].get_ylabel().startswith(ds.loss.attrs["long_name"])
    # conflict share of one recording: the trailing-window share of steps with cosine < 0
    window = 2  # 12 steps // 5
    ind = (ds.cosine.sel(layer="all", task="a", task_j="b").values < 0).astype(float)
    want = np.convolve(ind, np.ones(window) / window)[: len(ind)]
    want[: window - 1] = np.nan
    share = {ln.get_label(): ln.get_ydata() for ln in axes["conflict"].lines}
    np.testing.assert_allclose(share["all"], want)


def test_zarr_store_and_default_output(capsys, tmp_path, recording) -> None:
    with xr.open_dataset(recording, engine="h5netcdf") as ds:
        ds.load().to_zarr(tmp_path / "rec.zarr")
    capsys.readouterr()
    assert main(["report", str(tmp_path / "rec.zarr")]) == 0
    png, pdf = tmp_path / "rec_report.png", tmp_path / "rec_report.pdf"
    _check_image(png, pdf, 4)
    # existing figures are refused without --force, replaced with it
    capsys.readouterr()
    assert main(["report", str(tmp_path / "rec.zarr")]) == 2
    err = capsys.readouterr().err
    assert "exists; pass --force" in err and len(err.strip().splitlines()) == 1
    png.write_bytes(b"old")
    assert main(["report", str(tmp_path / "rec.zarr"), "--force"]) == 0
    _check_image(png, pdf, 4)


def test_ncnet_report(capsys, tmp_path, ncnet_run) -> None:
    ds = gradcomp.ncnet.open_dataset(ncnet_run)  # what the report reads: gram and cosine restored
    assert panels(ds) == ["loss", "cosine", "conflict", "units", "S"]
    png, pdf = _report(capsys, ncnet_run, tmp_path / "ncnet.png")  # a suffix on --out is dropped
    _check_image(png, pdf, 5)
    axes = _axes(figure(ds))
    assert len(axes) == 5
    # S with its band: the run's own S(step)
    np.testing.assert_allclose(axes["S"].lines[0].get_ydata(), ds.S.isel(width=0).values)
    # conflict share of an ensemble: share of the 6 seeds x 4 setting pairs with cosine < 0
    cos = ds.cosine.isel(width=0).sel(layer="hidden", task="A", task_j="B")  # also "all"
    want = (cos < 0).mean(["seed", "alice", "bob"]).values
    share = {ln.get_label(): ln.get_ydata() for ln in axes["conflict"].lines}
    np.testing.assert_allclose(share["hidden"], want)
    assert len(axes["units"].collections) == 1  # the unit heat map


def test_lora_report_estimates_s_from_outcomes(capsys, tmp_path, lora_run) -> None:
    with xr.open_dataset(lora_run, engine="h5netcdf") as ds:
        ds = ds.load()
    assert "S" not in ds and "a" in ds
    assert panels(ds) == ["loss", "cosine", "conflict", "S"]
    png, pdf = _report(capsys, lora_run, tmp_path / "lora")
    _check_image(png, pdf, 4)
    axes = _axes(figure(ds))
    want = gradcomp.chsh.estimate(
        ds.a.isel(rank=0).transpose("seed", "alice", "bob", "step"),
        ds.b.isel(rank=0).transpose("seed", "alice", "bob", "step"),
    )
    np.testing.assert_allclose(axes["S"].lines[0].get_ydata(), want.S.values)


def test_sweep_output_report(capsys, tmp_path) -> None:
    """A sweep's output (grid axes width x lr, outcomes only, no attributes): S per grid point."""
    from gradcomp.scaleout import Toy

    exp, seeds = Toy(), range(12)
    grid = {"width": [2, 3], "lr": [0.0, 0.5]}
    rows = [
        xr.concat([exp({"width": w, "lr": lr}, seeds) for lr in grid["lr"]], "lr")
        for w in grid["width"]
    ]
    ds = xr.concat(rows, "width").assign_coords(grid)
    ds.to_netcdf(tmp_path / "sweep.nc", engine="h5netcdf")
    assert panels(ds) == ["S"]
    png, pdf = _report(capsys, tmp_path / "sweep.nc", tmp_path / "sweep")
    _check_image(png, pdf, 1)
    s_lines = _axes(figure(ds))["S"].lines
    lines = {ln.get_label(): ln.get_ydata() for ln in s_lines if not ln.get_label().startswith("_")}
    assert len(lines) == 4
    order = ("seed", "alice", "bob", "step")
    cell = ds.sel(width=3, lr=0.5)
    want = gradcomp.chsh.estimate(cell.a.transpose(*order), cell.b.transpose(*order))
    np.testing.assert_allclose(lines["width = 3, lr = 0.5"], want.S.values)


def _fails(capsys, argv: list[str], match: str) -> None:
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc != 0 and "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("gradcomp report: error:"), lines[0]
    assert re.search(match, lines[0]), lines[0]


def test_bad_input(capsys, tmp_path) -> None:
    _fails(capsys, ["report", str(tmp_path / "missing.nc")], r"does not exist")
    (tmp_path / "notes.txt").write_text("x")
    _fails(capsys, ["report", str(tmp_path / "notes.txt")], r"unknown suffix '.txt'")
    (tmp_path / "garbage.nc").write_text("not a netCDF file")
    _fails(capsys, ["report", str(tmp_path / "garbage.nc")], r"cannot read .* as a netCDF file")
    other = xr.Dataset({"temperature": (("time",), np.ones(3))}, attrs={"source": "x"})
    other.to_netcdf(tmp_path / "other.nc", engine="h5netcdf")
    _fails(capsys, ["report", str(tmp_path / "other.nc")], r"not a gradcomp Dataset")
    empty = xr.Dataset({"x": ("i", np.arange(3.0))}, attrs={"gradcomp_version": "0"})
    empty.to_netcdf(tmp_path / "empty.nc", engine="h5netcdf")
    _fails(capsys, ["report", str(tmp_path / "empty.nc")], r"nothing to plot")
    assert not list(tmp_path.glob("*_report.*"))
    with pytest.raises(ValueError, match="nothing to plot"):
        figure(empty)
