"""Sweeps on a Dask LocalCluster with 2 worker processes: equality with an uninterrupted serial
run, resume, a killed worker, an interrupted driver, failures and bad input."""

from __future__ import annotations

import dataclasses
import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import xarray as xr

pytest.importorskip("distributed")

from distributed import Client, LocalCluster

from gradcomp.scaleout import Toy, sweep
from gradcomp.scaleout import store as store_mod

AXES = {"width": [2, 3], "lr": [0.0, 0.5]}


def reference(exp: Toy, axes: dict, seeds: range) -> xr.Dataset:
    """Obviously correct: every cell in one call over all its seeds, no Dask, no chunks."""
    rows = []
    for w in axes["width"]:
        cols = [exp({"width": w, "lr": lr}, seeds) for lr in axes["lr"]]
        rows.append(xr.concat(cols, xr.DataArray(axes["lr"], dims="lr", name="lr")))
    return xr.concat(rows, xr.DataArray(axes["width"], dims="width", name="width"))


def assert_seed_for_seed(ds: xr.Dataset, exp: Toy, seeds: range) -> None:
    ref = reference(exp, AXES, seeds)
    xr.testing.assert_equal(ds[["a", "b"]].load(), ref[["a", "b"]].transpose(*ds.a.dims))


def n_done(store: Path) -> int:
    d = store / "done"
    return len(list(d.glob("*.json"))) if d.exists() else 0


@pytest.fixture(scope="module")
def client():
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
            silence_logs=50,
        ) as cluster,
        Client(cluster, set_as_default=False) as c,
    ):  # fmt: skip
        yield c


def test_sweep_equals_serial_run_and_resumes(client, tmp_path) -> None:
    seeds = range(5, 45)
    kw = dict(axes=AXES, seeds=seeds, seeds_per_chunk=8, client=client, progress=False)
    ds = sweep(Toy(), tmp_path / "s", **kw)
    assert_seed_for_seed(ds, Toy(), seeds)
    # a rerun computes nothing: an experiment that fails on every seed would raise otherwise
    again = sweep(Toy(fail_seed=5), tmp_path / "s", **kw)
    xr.testing.assert_identical(again.load(), ds.load())
    # a different config is refused, not mixed in
    with pytest.raises(ValueError, match="different configuration"):
        sweep(Toy(noise=0.3), tmp_path / "s", **kw)


def test_corrupt_chunk_is_recomputed(client, tmp_path) -> None:
    kw = dict(axes=AXES, seeds=range(16), seeds_per_chunk=8, client=client, progress=False)
    sweep(Toy(), tmp_path / "s", **kw)
    victim = sorted(p for p in (tmp_path / "s" / "data.zarr" / "a").rglob("*") if p.is_file())[3]
    raw = bytearray(victim.read_bytes())
    raw[-5] ^= 0xFF
    victim.write_bytes(bytes(raw))
    assert_seed_for_seed(sweep(Toy(), tmp_path / "s", **kw), Toy(), range(16))


def test_failing_chunk_keeps_the_others_and_rerun_completes(client, tmp_path) -> None:
    kw = dict(axes=AXES, seeds=range(16), seeds_per_chunk=8, client=client, progress=False)
    with pytest.raises(RuntimeError, match=r"4 chunk\(s\) failed.*seed=0000000008"):
        sweep(Toy(fail_seed=9), tmp_path / "s", retries=0, **kw)
    assert n_done(tmp_path / "s") == 4
    assert_seed_for_seed(sweep(Toy(), tmp_path / "s", **kw), Toy(), range(16))


def test_full_disk_during_sweep(client, tmp_path, monkeypatch) -> None:
    kw = dict(axes=AXES, seeds=range(24), seeds_per_chunk=8, client=client, progress=False)
    real, calls, lock = store_mod._write_region, [], threading.Lock()

    def fills_up(lay, chunk, part):
        with lock:
            calls.append(chunk.key)
            full = len(calls) == 4
        if full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(lay, chunk, part)

    monkeypatch.setattr(store_mod, "_write_region", fills_up)
    with pytest.raises(OSError, match="disk is full"):
        sweep(Toy(), tmp_path / "s", **kw)
    # the chunk whose write failed is not done; every other chunk written is kept
    victim = calls[3]
    assert not (tmp_path / "s" / "done" / f"{victim}.json").exists()
    assert n_done(tmp_path / "s") == len(calls) - 1
    monkeypatch.setattr(store_mod, "_write_region", real)
    assert_seed_for_seed(sweep(Toy(), tmp_path / "s", **kw), Toy(), range(24))


def test_unknown_axis_and_empty_range_fail_before_any_work(client, tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown grid axis 'depth'"):
        sweep(Toy(), tmp_path / "s", axes={"depth": [1]}, seeds=range(4), client=client)
    with pytest.raises(ValueError, match="empty"):
        sweep(Toy(), tmp_path / "s", axes=AXES, seeds=range(0), client=client)
    with pytest.raises(ValueError, match="not an experiment"):
        sweep(lambda c, s: None, tmp_path / "s", seeds=range(4), client=client)  # type: ignore[arg-type]


def test_unreachable_scheduler_errors_quickly(tmp_path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free, nobody listens after the close
    with pytest.raises(ConnectionError, match=f"could not reach the Dask scheduler.*{port}"):
        sweep(
            Toy(), tmp_path / "s", axes=AXES, seeds=range(8),
            scheduler=f"tcp://127.0.0.1:{port}", connect_timeout=2, progress=False,
        )  # fmt: skip


def test_live_service_that_is_not_dask_fails_within_the_timeout(tmp_path) -> None:
    """A TCP service that accepts and says nothing: Client() alone would wait forever."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(4)
        t = time.perf_counter()
        with pytest.raises(ConnectionError, match="accepted the connection but gave no Dask"):
            sweep(
                Toy(), tmp_path / "s", axes=AXES, seeds=range(8),
                scheduler=f"tcp://127.0.0.1:{srv.getsockname()[1]}", connect_timeout=1.5,
                progress=False,
            )  # fmt: skip
        assert time.perf_counter() - t < 1.5 + 3
    assert not (tmp_path / "s" / "store.json").exists()


def test_bad_cells_fail_before_the_cluster(tmp_path) -> None:
    from gradcomp import ncnet
    from gradcomp.scaleout import NCnetExperiment

    exp = NCnetExperiment(ncnet.NCnetConfig(steps=5))
    for axes, match in [
        ({"width": [2, 0]}, r"grid cell width=0: width must be a positive integer"),
        ({"lr": [0.5]}, r"needs a 'width' grid axis"),
        ({"width": [2], "lr": [0.5, float("nan")]}, r"not finite"),
        ({"width": [2], "lr": [float("inf")]}, r"not finite"),
        ({"width": [2], "steps": [-1]}, r"grid cell width=2,steps=-1: steps must be"),
    ]:
        # an unreachable scheduler would raise ConnectionError: the cells are checked first
        with pytest.raises(ValueError, match=match):
            sweep(exp, tmp_path / "s", axes=axes, seeds=range(4), scheduler="tcp://127.0.0.1:1")
    assert not (tmp_path / "s").exists()


def test_killed_worker_loses_nothing(client, tmp_path) -> None:
    seeds, store = range(0, 96), tmp_path / "s"
    slow = Toy(sleep=0.15)
    pids = set(client.run(os.getpid).values())
    killed: list[int] = []
    at_kill: list[int] = []

    def killer() -> None:
        deadline = time.monotonic() + 60
        while n_done(store) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        pid = sorted(pids)[0]
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
        at_kill.append(n_done(store))

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    ds = sweep(slow, store, axes=AXES, seeds=seeds, seeds_per_chunk=8, client=client,
               progress=False)  # fmt: skip
    t.join()
    assert killed and n_done(store) == 4 * 12
    assert 4 <= at_kill[0] < 4 * 12  # the worker died mid-sweep
    assert killed[0] not in set(client.run(os.getpid).values())  # the nanny restarted it
    assert_seed_for_seed(ds, Toy(), seeds)


def test_sigint_to_the_cli_then_rerun(client, tmp_path) -> None:
    store = tmp_path / "s"
    # The CLI as a user's shell starts it, with Ctrl-C delivered. A non-interactive shell starts
    # its background jobs with SIGINT ignored (POSIX: no job control), `sh -c 'pytest ...' &`
    # included; the CLI would inherit that (exec keeps ignored and blocked signals) and finish
    # with 0, as it did in two full runs started that way.
    ctrl_c = (
        "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT]); sys.argv[0] = 'gradcomp'; "
        "runpy.run_module('gradcomp', run_name='__main__')"
    )
    cmd = [
        sys.executable, "-c", ctrl_c, "sweep", "--experiment", "toy", "--store", str(store),
        "--axis", "width=2,3", "--axis", "lr=0.0,0.5", "--seeds", "0:160",
        "--seeds-per-chunk", "8", "--set", "sleep=0.5", "--no-progress",
        "--scheduler", client.scheduler.address,
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while n_done(store) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    # 80 chunks of 0.5 s on 2 workers take 20 s: a sweep that ended first would test nothing
    assert proc.poll() is None, "the sweep ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    here = signal.getsignal(signal.SIGINT), signal.pthread_sigmask(signal.SIG_BLOCK, [])
    assert proc.returncode == 130, f"{err!r}; SIGINT in the test process: {here}"
    assert "interrupted" in err
    done = n_done(store)
    assert 3 <= done < 4 * 20
    ds = sweep(Toy(), store, axes=AXES, seeds=range(160), seeds_per_chunk=8, client=client,
               progress=False)  # fmt: skip
    assert_seed_for_seed(ds, Toy(), range(160))


def test_ncnet_sweep_equals_direct_run(client, tmp_path) -> None:
    from gradcomp import ncnet
    from gradcomp.scaleout import NCnetExperiment

    cfg = ncnet.NCnetConfig(steps=30, dtype="float64")
    exp = NCnetExperiment(cfg, keep=("a", "b", "loss", "gram"))
    axes = {"width": [2, 3], "lr": [0.5, 1.0]}
    ds = sweep(exp, tmp_path / "s", axes=axes, seeds=range(3, 9), seeds_per_chunk=4,
               client=client, progress=False).load()  # fmt: skip
    for lr in axes["lr"]:
        ref = ncnet.run(
            ncnet.NCnetConfig(steps=30, dtype="float64", lr=lr), [2, 3], range(3, 9),
            progress=False, engine="loop",
        )  # fmt: skip
        got = ds.sel(lr=lr, drop=True)
        for var in ("a", "b", "diverged"):  # diverged: kept with the outcomes
            xr.testing.assert_equal(got[var], ref[var].transpose(*got[var].dims))
        for var in ("loss", "gram"):
            xr.testing.assert_allclose(
                got[var], ref[var].transpose(*got[var].dims), rtol=1e-9, atol=1e-12
            )


@pytest.mark.slow
def test_lora_sweep_equals_direct_run(client, tmp_path) -> None:
    pytest.importorskip("peft")
    from gradcomp import lora
    from gradcomp.scaleout import LoraSweepExperiment

    base = lora.LoraExperiment.tiny()
    exp = LoraSweepExperiment(base, keep=("a", "b", "loss"))
    ds = sweep(exp, tmp_path / "s", axes={"rank": [1]}, seeds=range(0, 3), seeds_per_chunk=2,
               client=client, progress=False).load()  # fmt: skip
    ref = lora.run(dataclasses.replace(base, ranks=(1,), n_seeds=3, first_seed=0))
    got = ds.sel(rank=1, drop=True)
    for var in ("a", "b"):
        xr.testing.assert_equal(got[var], ref[var].sel(rank=1, drop=True).transpose(*got[var].dims))
    xr.testing.assert_allclose(
        got["loss"], ref["loss"].sel(rank=1, drop=True).transpose(*got["loss"].dims), rtol=1e-5
    )
