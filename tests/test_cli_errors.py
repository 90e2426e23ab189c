"""Every sub-command turns bad input, unusable devices and unusable paths into one line on stderr
and a non-zero exit, before any work starts; results are never lost to a failed write."""

from __future__ import annotations

import http.server
import importlib
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import xarray as xr

from gradcomp.cli import main

#: validation happens before any work: each case takes milliseconds beyond the imports (this
#: bound leaves room for a machine shared by many processes)
LIMIT_S = 3.0


@pytest.fixture(autouse=True)
def _no_work(monkeypatch):
    """Fail loudly if a case gets as far as training or starting a cluster."""
    import gradcomp.lora.experiment as lora_exp
    import gradcomp.ncnet._experiment as ncnet_exp

    sweep_mod = importlib.import_module("gradcomp.scaleout.sweep")  # the package shadows it

    def boom(*args, **kwargs):
        raise AssertionError("work started before the input was checked")

    monkeypatch.setattr(ncnet_exp, "capacity", boom)
    monkeypatch.setattr(lora_exp, "_train_rank", boom)
    monkeypatch.setattr(lora_exp, "_train", boom)  # the calibration trains too
    monkeypatch.setattr(sweep_mod, "connect", boom)


def fails(capsys, argv: list[str], match: str, limit: float = LIMIT_S) -> str:
    """Run the CLI; assert a non-zero exit, exactly one line on stderr matching ``match``."""
    capsys.readouterr()
    t = time.perf_counter()
    rc = main(argv)
    elapsed = time.perf_counter() - t
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc != 0, (argv, err)
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert re.search(match, lines[0]), lines[0]
    assert lines[0].startswith("gradcomp"), lines[0]
    assert elapsed < limit, (argv, elapsed)
    return lines[0]


def ncnet(tmp_path: Path, *extra: str) -> list[str]:
    return ["ncnet", "--widths", "2", "--seeds", "4", "--steps", "3", "--n-boot", "20",
            "--no-progress", "--out", str(tmp_path / "n.nc"), *extra]  # fmt: skip


NCNET_BAD = [
    (["--lr", "nan"], r"--lr.*not a finite number"),
    (["--lr", "inf"], r"--lr.*not a finite number"),
    (["--lr", "-1"], r"--lr.*> 0"),
    (["--seeds", "0"], r"--seeds.*>= 1"),
    (["--seeds", "1"], r"at least 2 seeds"),
    (["--widths", "0"], r"positive"),
    (["--steps", "-1"], r"steps"),
    (["--confidence", "1.5"], r"confidence"),
    (["--n-boot", "5"], r"n-boot"),
    (["--chunk", "0"], r"--chunk"),
    (["--alice", "x1", "x9"], r"x9"),
    (["--trace-every", "0"], r"trace_every"),
    (["--device", "banana"], r"--device: device 'banana' is not a torch device"),
    (["--device", "meta"], r"meta"),
    (["--engine", "c", "--device", "cuda:0"], r"engine c runs on the CPU|CUDA"),
    (["--out", "a\x00b.nc"], r"--out 'a\\x00b.nc': a path cannot contain a NUL byte"),
    (["--figure", "f\x00.png"], r"--figure .*NUL byte"),
]


@pytest.mark.parametrize(("extra", "match"), NCNET_BAD, ids=[" ".join(e) for e, _ in NCNET_BAD])
def test_ncnet_bad_input(capsys, tmp_path, extra, match) -> None:
    fails(capsys, ncnet(tmp_path, *extra), match)
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_device_without_cuda(capsys, tmp_path) -> None:
    fails(capsys, ncnet(tmp_path, "--device", "cuda"), r"--device: device 'cuda'.*CUDA")
    fails(capsys, ncnet(tmp_path, "--device", "cuda:1"), r"CUDA")


def test_ncnet_output_paths(capsys, tmp_path) -> None:
    d = tmp_path / "adir"
    d.mkdir()
    fails(capsys, ncnet(tmp_path, "--out", str(d)), r"--out .*adir is a directory")
    fails(capsys, ncnet(tmp_path, "--out", "/proc/x.nc"), r"--out /proc/x.nc: cannot create")
    fails(capsys, ncnet(tmp_path, "--out", str(tmp_path / "n.txt")), r"unknown suffix '.txt'")
    fails(capsys, ncnet(tmp_path, "--figure", str(tmp_path / "f.jpgx")), r"suffix '.jpgx'")
    fails(capsys, ncnet(tmp_path, "--figure", str(tmp_path / "f")), r"suffix '\(none\)'")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    fails(capsys, ncnet(tmp_path, "--out", str(blocker / "sub" / "n.nc")), r"not a directory")
    fails(capsys, ncnet(tmp_path, "--figure", str(tmp_path / "n.nc")), r"is the --out file")
    # an existing file is kept unless --force
    out = tmp_path / "old.nc"
    out.write_bytes(b"precious")
    fails(capsys, ncnet(tmp_path, "--out", str(out)), r"old.nc exists; pass --force")
    fig = tmp_path / "old_capacity.png"
    fig.write_bytes(b"precious")
    out.unlink()
    fails(capsys, ncnet(tmp_path, "--out", str(out)), r"old_capacity.png exists; pass --force")
    assert fig.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "file", "old_capacity.png"]


def test_ncnet_writes_next_to_out_and_falls_back_when_the_write_fails(
    capsys, tmp_path, monkeypatch
) -> None:
    import gradcomp.ncnet._experiment as ncnet_exp

    monkeypatch.undo()  # the real training for this test
    out = tmp_path / "deep" / "n.nc"
    assert main(ncnet(tmp_path, "--out", str(out), "--no-control")) == 0
    assert out.exists() and (tmp_path / "deep" / "n_capacity.png").exists()
    first = xr.load_dataset(out, engine="h5netcdf")
    # overwrite only with --force
    assert main(ncnet(tmp_path, "--out", str(out), "--no-control", "--figure", "none")) != 0
    # the directory vanishes during training: the data go to a fallback file named on stderr
    capacity = ncnet_exp.capacity

    def sabotage(*args, **kwargs):
        ds = capacity(*args, **kwargs)
        (tmp_path / "deep" / "n.nc").unlink()
        (tmp_path / "deep" / "n_capacity.png").unlink()
        (tmp_path / "deep").rmdir()
        (tmp_path / "deep").write_text("now a file")
        return ds

    monkeypatch.setattr(ncnet_exp, "capacity", sabotage)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(ncnet(tmp_path, "--out", str(out), "--no-control", "--force")) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    saved = Path(re.search(r"saved it to (\S+\.nc)", err).group(1))
    try:
        again = xr.load_dataset(saved, engine="h5netcdf")
        xr.testing.assert_equal(again[["a", "b", "S"]], first[["a", "b", "S"]])
    finally:
        saved.unlink()


def test_figure_write_failure_keeps_the_data(capsys, tmp_path, monkeypatch) -> None:
    import matplotlib.figure

    monkeypatch.undo()

    def broken(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", broken)
    capsys.readouterr()
    assert main(ncnet(tmp_path, "--no-control")) == 1
    err = capsys.readouterr().err.strip()
    # stderr: what was done ("wrote" the data), then the error as its last and only error line
    assert "Traceback" not in err and f"wrote {tmp_path / 'n.nc'}" in err
    assert [line for line in err.splitlines() if "error" in line] == [err.splitlines()[-1]]
    err = err.splitlines()[-1]
    assert "could not write the figure" in err and "the data are in" in err
    assert (tmp_path / "n.nc").exists() and not (tmp_path / "n_capacity.png").exists()


def sweep(tmp_path: Path, *extra: str) -> list[str]:
    return ["sweep", "--store", str(tmp_path / "s"), "--seeds", "0:8", "--seeds-per-chunk", "4",
            "--no-progress", *extra]  # fmt: skip


SWEEP_BAD = [
    (["--axis", "width=0"], r"grid cell width=0: width must be a positive integer"),
    (["--axis", "width=2.5"], r"width must be a positive integer"),
    (["--axis", "width=2", "--axis", "lr=nan"], r"--axis lr: 'nan' is not a finite number"),
    (["--axis", "width=2", "--axis", "lr=inf"], r"--axis lr: 'inf' is not a finite number"),
    (["--axis", "width=2", "--axis", "lr=-0.5"], r"lr and init_scale must be positive"),
    (["--axis", "width=2", "--axis", "lr=abc"], r"grid cell width=2,lr=abc"),
    (["--axis", "lr=0.5"], r"needs a 'width' grid axis"),
    (["--axis", "depth=2"], r"unknown grid axis 'depth'"),
    (["--axis", "width=2", "--set", "lr=inf"], r"--set lr: 'inf' is not a finite number"),
    (["--axis", "width=2", "--set", "steps=-3"], r"steps must be a non-negative"),
    (["--axis", "width=2", "--set", "stepz=3"], r"unknown --set key\(s\) stepz"),
    (["--axis", "width=2", "--set", "engine=gpu"], r"engine must be one of"),
    (["--axis", "width=2", "--set", "device=banana"], r"'banana' is not a torch device"),
    (["--axis", "width=2", "--set", "threads=0"], r"threads must be a positive integer"),
    (["--axis", "width=2", "--set", "oops"], r"--set takes KEY=VALUE"),
    (["--axis", "width=2", "--seeds-per-chunk", "0"], r"--seeds-per-chunk.*>= 1"),
    (["--axis", "width=2", "--workers", "0"], r"--workers.*>= 1"),
    (["--axis", "width=2", "--retries", "-1"], r"--retries.*>= 0"),
    (["--axis", "width=2", "--seeds", "5:5"], r"empty"),
    (["--axis", "width"], r"--axis takes NAME=V1"),
    (["--experiment", "nosuchmodule:f", "--axis", "width=2"], r"ModuleNotFoundError"),
    (["--experiment", "toy", "--axis", "width=2", "--set", "noize=1"], r"unknown --set key"),
    (["--experiment", "lora", "--axis", "rank=0"], r"rank must be a positive integer"),
    (["--experiment", "lora", "--axis", "lr=0.1"], r"needs a 'rank' grid axis"),
    (["--experiment", "lora", "--axis", "rank=1", "--set", "steps=0"], r"steps must be at"),
    (["--experiment", "lora", "--axis", "rank=1", "--set", 'languages=["en","zz"]'], r"'zz'"),
    (["--experiment", "gradcomp.scaleout:Toy", "--axis", "width=1", "--set", "x=1"], r"'x'"),
]


@pytest.mark.parametrize(("extra", "match"), SWEEP_BAD, ids=[" ".join(e) for e, _ in SWEEP_BAD])
def test_sweep_bad_input_fails_before_the_cluster(capsys, tmp_path, extra, match) -> None:
    fails(capsys, sweep(tmp_path, *extra), match)
    assert not (tmp_path / "s" / "store.json").exists()  # no configuration lock


def test_sweep_store_under_a_file(capsys, tmp_path) -> None:
    (tmp_path / "f").write_text("x")
    args = ["sweep", "--store", str(tmp_path / "f" / "s"), "--axis", "width=2", "--no-progress"]
    fails(capsys, args, r"cannot write the sweep store")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_sweep_device_without_cuda(capsys, tmp_path) -> None:
    fails(capsys, sweep(tmp_path, "--axis", "width=2", "--set", "device=cuda"), r"CUDA")


def test_corrected_sweep_is_not_refused_after_a_failed_one(capsys, tmp_path, monkeypatch) -> None:
    """The first command fails before any chunk; the corrected one runs (serially, no cluster)."""
    import contextlib

    sweep_mod = importlib.import_module("gradcomp.scaleout.sweep")  # the package shadows it

    monkeypatch.undo()
    first = ["--experiment", "toy", "--axis", "width=0,1", "--set", "noise=0.3"]
    fails(capsys, sweep(tmp_path, *first, "--scheduler", "banana"), r"scheduler address")

    class Serial:
        """Just enough of a Dask client to run the chunks in this process."""

        loop = None

    def run_here(c, experiment, todo, st, bar, tag, retries, max_in_flight):
        from gradcomp.scaleout.chunkio import run_chunk

        for chunk in todo:
            st.write(chunk, run_chunk(chunk, experiment)[1])
        return []

    monkeypatch.setattr(sweep_mod, "connect", lambda *a: contextlib.nullcontext(Serial()))
    monkeypatch.setattr(sweep_mod, "_run", run_here)
    assert main(sweep(tmp_path, "--experiment", "toy", "--axis", "width=0,1")) == 0
    assert (tmp_path / "s" / "store.json").exists()


@pytest.fixture
def silent_server():
    """A TCP service on 127.0.0.1 that accepts connections and never says a word."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.2)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except (TimeoutError, OSError):
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"tcp://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    t.join(timeout=5)
    for c in conns:
        c.close()
    srv.close()


@pytest.fixture
def http_server():
    """A plain HTTP server on 127.0.0.1 (a live service that is not a Dask scheduler)."""

    class Quiet(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    t.start()
    yield f"tcp://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()
    t.join(timeout=5)


def _scheduler_fails(capsys, tmp_path, monkeypatch, address: str, match: str) -> None:
    sweep_mod = importlib.import_module("gradcomp.scaleout.sweep")  # the package shadows it

    monkeypatch.undo()  # the real connect(); the scheduler check must stop it
    monkeypatch.setattr(sweep_mod, "_run", lambda *a: pytest.fail("chunks were submitted"))
    args = sweep(tmp_path, "--experiment", "toy", "--axis", "width=2", "--scheduler", address,
                 "--connect-timeout", "2")  # fmt: skip
    fails(capsys, args, match, limit=2 + LIMIT_S)
    assert not (tmp_path / "s" / "store.json").exists()


def test_scheduler_that_says_nothing(capsys, tmp_path, monkeypatch, silent_server) -> None:
    _scheduler_fails(
        capsys,
        tmp_path,
        monkeypatch,
        silent_server,
        r"within 2 s.*accepted the connection but gave no Dask reply",
    )


def test_scheduler_that_is_an_http_server(capsys, tmp_path, monkeypatch, http_server) -> None:
    _scheduler_fails(capsys, tmp_path, monkeypatch, http_server, r"could not reach the Dask sch")


@pytest.mark.parametrize("address", ["banana", "http://127.0.0.1:80", "tcp://127.0.0.1:99999"])
def test_garbage_scheduler_address(capsys, tmp_path, monkeypatch, address) -> None:
    _scheduler_fails(capsys, tmp_path, monkeypatch, address, r"scheduler")


def lora(tmp_path: Path, *extra: str) -> list[str]:
    return ["lora", "--tiny", "--out", str(tmp_path / "out"), *extra]


LORA_BAD = [
    (["--ranks", "0"], r"--ranks.*>= 1"),
    (["--steps", "0"], r"--steps.*>= 1"),
    (["--lr", "nan"], r"--lr.*not a finite number"),
    (["--lr", "-0.1"], r"--lr.*> 0"),
    (["--threshold", "2"], r"threshold of A1 must lie in \(0, 1\)"),
    (["--threshold", "0.5", "--calibration-seeds", "4"], r"exactly one of"),
    (["--seeds", "100001"], r"calibration seeds .* overlap the measured seeds"),
    (["--control-seeds", "9"], r"control_seeds must be in 0..n_seeds"),
    (["--layers=9"], r"layers \[9\] out of range"),
    (["--ranks", "400"], r"rank 400 exceeds the adapted dimension"),
    (["--n-boot", "3"], r"n-boot"),
    (["--task", "C1=lang:en"], r"--task takes A1=SPEC"),
    (["--languages", "en", "zz"], r"unknown language code"),
    (["--device", "banana"], r"'banana' is not a torch device"),
    (["--small"], r"not allowed with argument"),
    # a ValueError ("embedded null byte") from the first write, after training, until checked
    (["--out", "out\x00x"], r"--out .*: a path cannot contain a NUL byte"),
]


@pytest.mark.parametrize(("extra", "match"), LORA_BAD, ids=[" ".join(e) for e, _ in LORA_BAD])
def test_lora_bad_input(capsys, tmp_path, extra, match) -> None:
    fails(capsys, lora(tmp_path, *extra), match)
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_lora_device_without_cuda(capsys, tmp_path) -> None:
    fails(capsys, lora(tmp_path, "--device", "cuda"), r"CUDA")


def test_lora_output_paths(capsys, tmp_path) -> None:
    blocker = tmp_path / "out"
    blocker.write_text("x")
    fails(capsys, lora(tmp_path), r"--out .*out is a file")
    blocker.unlink()
    blocker.mkdir()
    (blocker / "lora_rank_summary.nc").write_bytes(b"precious")
    fails(capsys, lora(tmp_path), r"lora_rank_summary.nc exists; pass --force")
    fails(capsys, lora(tmp_path, "--out", "/proc/x"), r"cannot create")


def test_lora_model_path_is_one_line(capsys, tmp_path) -> None:
    pytest.importorskip("peft")
    fails(capsys, lora(tmp_path, "--model", str(tmp_path / "nope")), r"does not exist", limit=30)


def test_the_real_process_prints_one_line() -> None:
    """``python -m gradcomp``: no traceback from a bad device, exit status 2."""
    proc = subprocess.run(
        [sys.executable, "-m", "gradcomp", "ncnet", "--device", "banana", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "gradcomp ncnet: error: --device: device 'banana' is not a torch device; "
        "use cpu, cuda, cuda:N or mps"
    ]
