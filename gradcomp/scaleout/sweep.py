"""Run a grid of chunks as Dask tasks, write each finished chunk once, resume what is missing."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from gradcomp.scaleout.chunkio import open_store, run_chunk
from gradcomp.scaleout.experiments import (
    Experiment,
    LoraSweepExperiment,
    NCnetExperiment,
    check_engine,
)
from gradcomp.scaleout.grid import Chunk, Grid
from gradcomp.scaleout.store import ChunkStore, Verify

__all__ = ["check_cells", "check_scheduler", "connect", "sweep"]


def _machine_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class _BadAddress(Exception):
    """A scheduler address that Dask cannot parse."""


async def _identity(address: str, timeout: float) -> Any:
    """The reply of the server at ``address`` to Dask's ``identity`` request, within ``timeout``."""
    import asyncio

    from distributed.comm import connect as comm_connect
    from distributed.comm.addressing import parse_address, parse_host_port

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout

    def left() -> float:
        return max(0.01, deadline - loop.time())

    silent = OSError("it accepted the connection but gave no Dask reply: not a Dask scheduler?")
    try:
        scheme, loc = parse_address(address)
        host, port = parse_host_port(loc) if scheme == "tcp" else (None, None)
    except (ValueError, TypeError) as err:
        raise _BadAddress(str(err)) from None
    if host is not None:  # plain TCP first: tells "nobody there" from "not Dask"
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), left())
        except TimeoutError:
            raise OSError("no connection within the timeout: is the host reachable?") from None
        writer.close()
    try:
        comm = await asyncio.wait_for(comm_connect(address, timeout=timeout), left())
    except (ValueError, TypeError) as err:  # raised before any connection is tried
        raise _BadAddress(str(err)) from None
    except TimeoutError:
        raise silent from None
    try:
        await asyncio.wait_for(comm.write({"op": "identity", "reply": True}), left())
        return await asyncio.wait_for(comm.read(), left())
    except TimeoutError:
        raise silent from None
    finally:
        comm.abort()


def check_scheduler(address: str, timeout: float = 5.0) -> None:
    """Raise unless a Dask scheduler answers at ``address`` within ``timeout`` seconds.

    ``distributed.Client`` waits without a bound for the handshake of a server that accepts the
    connection but does not speak Dask's protocol (an HTTP server, say); this probe bounds every
    step (connect, handshake, an ``identity`` request) by one deadline.

    Raises:
        ValueError: ``address`` is not a Dask address (e.g. no port, an unknown scheme).
        ConnectionError: nothing answered as a Dask scheduler within ``timeout`` (one line).
    """
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    # a fresh event loop in its own thread: works whether or not the caller runs one
    with ThreadPoolExecutor(1, thread_name_prefix="gradcomp-probe") as pool:
        try:
            reply = pool.submit(asyncio.run, _identity(address, timeout)).result()
        except _BadAddress as err:
            raise ValueError(
                f"bad Dask scheduler address {address!r} ({err}); use tcp://HOST:PORT"
            ) from None
        except Exception as err:  # every failure means: no scheduler there
            why = " ".join(str(err).split())[:200] or type(err).__name__
            if type(err) is not OSError:
                why = f"{type(err).__name__}: {why}"
            raise ConnectionError(
                f"could not reach the Dask scheduler at {address} within {timeout:g} s ({why}); "
                "check the address and that the scheduler runs"
            ) from None
    kind = reply.get("type") if isinstance(reply, dict) else None
    if kind != "Scheduler":
        raise ConnectionError(
            f"{address} answered, but as a Dask {kind or 'peer'}, not a scheduler; "
            "give the scheduler's address"
        )


@contextlib.contextmanager
def connect(
    client: Any = None,
    scheduler: str | None = None,
    n_workers: int | None = None,
    timeout: float = 5.0,
) -> Iterator[Any]:
    """Yield a ``dask.distributed.Client``: the given one, one connected to ``scheduler``, or a
    LocalCluster of ``n_workers`` single-threaded worker processes (default: one per core).

    Raises:
        ConnectionError: ``scheduler`` is not a Dask scheduler answering within ``timeout`` s.
        ValueError: both ``client`` and ``scheduler`` given, or a malformed ``scheduler``.
    """
    from distributed import Client, LocalCluster

    if client is not None:
        if scheduler is not None:
            raise ValueError("give either client= or scheduler=, not both")
        yield client
        return
    if scheduler is not None:
        check_scheduler(scheduler, timeout)
        try:
            c = Client(scheduler, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError) as err:
            raise ConnectionError(
                f"could not reach the Dask scheduler at {scheduler} within {timeout:g} s "
                f"({type(err).__name__}: {err}); check the address and that the scheduler runs"
            ) from None
        try:
            yield c
        finally:
            c.close()
        return
    n = n_workers or _machine_cores()
    with (
        LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=40,
        ) as cluster,
        Client(cluster, set_as_default=False) as c,
    ):
        yield c


def _integer(name: str, value: Any) -> int:
    """``value`` as an int if it is a positive whole number (``3`` or ``3.0``), else raise."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (ok and math.isfinite(value) and value == int(value) and value >= 1):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _finite_lr(cfg: Any) -> None:
    lr = getattr(cfg, "lr", None)
    if lr is not None and not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite positive number, got {lr!r}")


def _check_ncnet_cell(exp: NCnetExperiment, cell: dict[str, Any]) -> None:
    """What ``NCnetExperiment.__call__`` would refuse on a worker, checked on the driver."""
    if "width" not in cell:
        raise ValueError("the NCnet experiment needs a 'width' grid axis (e.g. width=2,3,4)")
    _integer("width", cell["width"])
    overrides = {k: v for k, v in cell.items() if k != "width"}
    cfg = dataclasses.replace(exp.base, **overrides)  # runs NCnetConfig's own checks
    _finite_lr(cfg)
    check_engine(exp.engine)
    if not isinstance(exp.threads, int) or isinstance(exp.threads, bool) or exp.threads < 1:
        raise ValueError(f"threads must be a positive integer, got {exp.threads!r}")


def _check_lora_cell(exp: LoraSweepExperiment, cell: dict[str, Any]) -> None:
    """What ``LoraSweepExperiment.__call__`` would refuse on a worker, checked on the driver."""
    if "rank" not in cell:
        raise ValueError("the LoRA experiment needs a 'rank' grid axis (e.g. rank=1,2,4)")
    rank = _integer("rank", cell["rank"])
    overrides = {k: v for k, v in cell.items() if k != "rank"}
    cfg = dataclasses.replace(exp.base, ranks=(rank,), **overrides)
    cfg.validate()  # LoraExperiment's own checks
    _finite_lr(cfg)
    from gradcomp.lora.data import validate_languages

    validate_languages(list(cfg.languages))


def _device_of(experiment: Any) -> str | None:
    if isinstance(experiment, NCnetExperiment):
        return str(experiment.device)
    if isinstance(experiment, LoraSweepExperiment):
        return str(experiment.base.device)
    return None


def check_cells(experiment: Experiment, grid: Grid, *, local: bool = True) -> None:
    """Check every cell of ``grid`` with the experiment's own validator, before any work.

    The validator is ``experiment.validate(cell)`` when the experiment defines one; NCnet and LoRA
    cells are checked by building each cell's config (so its ``__post_init__``/``validate``
    checks run) plus the grid axis itself (``width``/``rank``: a positive integer). The device is
    parsed, and with ``local`` (a LocalCluster on this machine) also checked to be available.

    Raises:
        ValueError: one line naming the first bad cell.
    """
    from gradcomp.device import check_device

    device = _device_of(experiment)
    if device is not None:
        check_device(device, available=local)
    validate = getattr(experiment, "validate", None)
    if not callable(validate):
        if isinstance(experiment, NCnetExperiment):
            validate = functools.partial(_check_ncnet_cell, experiment)
        elif isinstance(experiment, LoraSweepExperiment):
            validate = functools.partial(_check_lora_cell, experiment)
        else:
            return
    for cell in grid.cells():
        try:
            validate(dict(cell))
        except (ValueError, TypeError) as err:
            where = ",".join(f"{k}={v}" for k, v in cell) or "(no axes)"
            text = " ".join(str(err).split())
            raise ValueError(f"grid cell {where}: {text}") from None


class _Progress:
    """tqdm bar over chunks, with the running S of the cell that finished last."""

    def __init__(self, total: int, done: int, enabled: bool):
        self.bar = tqdm(total=total, initial=done, unit="chunk", disable=not enabled)
        self.sums: dict[str, tuple[np.ndarray, int]] = {}

    def update(self, chunk: Chunk, tally: Any) -> None:
        if tally is not None:
            cell = ",".join(f"{k}={v}" for k, v in chunk.coords) or "all"
            s, n = self.sums.get(cell, (np.zeros((2, 2)), 0))
            s, n = s + tally[0], n + tally[1]
            self.sums[cell] = (s, n)
            c = s / n
            S = c[0, 0] + c[0, 1] + c[1, 0] - c[1, 1]
            self.bar.set_postfix_str(f"S[{cell}]={S:.3f} (n={n})", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def sweep(
    experiment: Experiment,
    store: str | os.PathLike[str],
    *,
    seeds: range | Sequence[int],
    axes: Mapping[str, Sequence[Any]] | None = None,
    seeds_per_chunk: int = 250,
    client: Any = None,
    scheduler: str | None = None,
    n_workers: int | None = None,
    retries: int = 2,
    verify: Verify = "hash",
    max_in_flight: int = 4096,
    connect_timeout: float = 5.0,
    progress: bool = True,
) -> xr.Dataset:
    """Run ``experiment`` over ``axes`` × ``seeds`` on Dask, storing each chunk once in ``store``.

    Chunks already finished in ``store`` (done-marker present, file intact) are skipped; corrupt or
    half-written ones are recomputed. Each chunk's seeds depend only on its grid coordinates, so the
    result equals, seed for seed, that of an uninterrupted run. The driver writes every chunk (no
    shared file system is needed between workers and driver).

    Args:
        experiment: the chunk function (see :mod:`gradcomp.scaleout.experiments`).
        store: directory of the chunk store.
        seeds: ``range(start, stop)`` of seeds per cell.
        axes: ``axis -> values``, e.g. ``{"width": [2, 3, 4], "lr": [0.1, 0.5]}``.
        seeds_per_chunk: seeds per Dask task.
        client: an existing ``distributed.Client`` to use.
        scheduler: address ``tcp://HOST:PORT`` of a running Dask scheduler.
        n_workers: worker processes of the default LocalCluster (default: one per core).
        retries: Dask retries of a chunk that raised; a worker death is rescheduled by Dask itself.
        verify: check finished chunks by ``"hash"`` (sha256) or ``"size"`` before skipping them.
        max_in_flight: most chunks submitted at once; submission is batched.
        connect_timeout: seconds to wait for ``scheduler``.
        progress: show a progress bar with chunks done / total and the running S.

    Returns:
        The whole store as one lazy Dataset (:func:`open_store`).

    Raises:
        ValueError: bad grid (unknown axis, empty range), experiment, or a cell the
            experiment's validator refuses (:func:`check_cells`): raised before the store is
            written or a cluster starts.
        ConfigMismatchError: ``store`` holds results of a different config.
        PermissionError: ``store`` is not writable.
        ConnectionError: ``scheduler`` unreachable.
        OSError: a chunk could not be written (e.g. disk full); finished chunks are kept.
        RuntimeError: some chunks failed after retries; the others are stored.
    """
    if not isinstance(experiment, Experiment):
        raise ValueError(
            f"{experiment!r} is not an experiment (needs name, axes(), config(), __call__)"
        )
    grid = Grid.build(axes or {}, seeds, seeds_per_chunk, allowed=experiment.axes())
    check_cells(experiment, grid, local=client is None and scheduler is None)
    config = {
        "experiment": experiment.name,
        "experiment_config": experiment.config(),
        "seeds_per_chunk": grid.seeds_per_chunk,
    }
    st = ChunkStore(store, config, grid)
    chunks = grid.chunks()
    done, corrupt = st.done(chunks, verify)
    todo = [c for c in chunks if c.key not in done]
    if todo and client is None and scheduler is not None:
        check_scheduler(scheduler, connect_timeout)  # before the progress bar: errors are 1 line
    bar = _Progress(len(chunks), len(done), progress)
    if corrupt:
        bar.bar.write(f"recomputing {len(corrupt)} corrupt or half-written chunk(s)")
    try:
        if todo:
            with connect(client, scheduler, n_workers, connect_timeout) as c:
                # task keys: config hash + a per-run token (a cancelled key is never reused)
                tag = f"{st.hash[:12]}-{uuid.uuid4().hex[:8]}"
                failed = _run(c, experiment, todo, st, bar, tag, retries, max_in_flight)
            if failed:
                first_key, first_err = failed[0]
                raise RuntimeError(
                    f"{len(failed)} chunk(s) failed after {retries} retries "
                    f"(first: {first_key}: {first_err!r}); {len(chunks) - len(failed)} chunks are "
                    "stored. Fix the cause and rerun the same sweep to compute the rest."
                ) from first_err
    finally:
        bar.close()
    return open_store(st.path, grid=grid)


def _run(
    client: Any,
    experiment: Experiment,
    todo: list[Chunk],
    st: ChunkStore,
    bar: _Progress,
    tag: str,
    retries: int,
    max_in_flight: int,
) -> list[tuple[str, BaseException]]:
    """Submit ``todo`` in batches, write results as they arrive; return failed chunks."""
    from distributed import as_completed

    by_key = {f"gradcomp-{tag}-{c.key}": c for c in todo}
    pending = list(by_key)[::-1]
    ac = as_completed(loop=client.loop)
    in_flight: set[Any] = set()
    failed: list[tuple[str, BaseException]] = []
    lost: dict[str, int] = {}

    def submit() -> None:
        n = min(len(pending), max_in_flight - len(in_flight))
        if n <= 0:
            return
        keys = [pending.pop() for _ in range(n)]
        futs = client.map(
            run_chunk,
            [by_key[k] for k in keys],
            experiment=experiment,
            key=keys,
            retries=retries,
            pure=False,
        )
        in_flight.update(futs)
        ac.update(futs)

    writers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="gradcomp-store")
    try:
        submit()
        for batch in ac.batches():
            ok = [f for f in batch if f.status == "finished"]
            for f in batch:
                chunk = by_key[f.key]
                if f.status == "lost" and lost.get(chunk.key, 0) < retries:
                    # its worker died after it finished, before the driver took the result
                    lost[chunk.key] = lost.get(chunk.key, 0) + 1
                    again = f"gradcomp-{tag}-again{lost[chunk.key]}-{chunk.key}"
                    by_key[again] = chunk
                    pending.append(again)
                elif f.status == "error":
                    failed.append((by_key[f.key].key, f.exception()))
                elif f.status != "finished":
                    failed.append((by_key[f.key].key, RuntimeError(f"task {f.status}")))
            results = client.gather(ok)
            chunks = [by_key[f.key] for f in ok]
            for c, (key, _, _) in zip(chunks, results, strict=True):
                if key != c.key:
                    raise RuntimeError(f"internal: result {key} for task {c.key}")
            # fsync-bound writes overlap in a few threads; each chunk is still written once
            errors = list(writers.map(_write, [st] * len(ok), chunks, [r[1] for r in results]))
            for c, (_, _, tally), err in zip(chunks, results, errors, strict=True):
                if err is None:
                    bar.update(c, tally)
            first = next((e for e in errors if e is not None), None)
            if first is not None:
                raise first
            in_flight.difference_update(batch)
            for f in batch:
                f.release()
            if len(in_flight) <= max_in_flight // 2 or not in_flight:
                submit()
    finally:
        writers.shutdown(wait=True)
        if in_flight:
            client.cancel(list(in_flight))
    return failed


def _write(st: ChunkStore, chunk: Chunk, payload: bytes) -> OSError | None:
    try:
        st.write(chunk, payload)
    except OSError as err:
        return err
    return None
