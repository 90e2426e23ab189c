"""Run a grid of chunks as Dask tasks, write each finished chunk once, resume what is missing."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from gradcomp.scaleout.chunkio import open_store, run_chunk
from gradcomp.scaleout.experiments import Experiment
from gradcomp.scaleout.grid import Chunk, Grid
from gradcomp.scaleout.store import ChunkStore, Verify

__all__ = ["connect", "sweep"]


def _machine_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


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
        ConnectionError: ``scheduler`` cannot be reached within ``timeout`` seconds.
        ValueError: both ``client`` and ``scheduler`` given.
    """
    from distributed import Client, LocalCluster

    if client is not None:
        if scheduler is not None:
            raise ValueError("give either client= or scheduler=, not both")
        yield client
        return
    if scheduler is not None:
        try:
            c = Client(scheduler, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError) as err:
            raise ConnectionError(
                f"could not reach the Dask scheduler at {scheduler} within {timeout:g} s "
                f"({type(err).__name__}: {err}); check the address and that the scheduler runs"
            ) from err
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
        ValueError: bad grid (unknown axis, empty range) or experiment.
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
    config = {
        "experiment": experiment.name,
        "experiment_config": experiment.config(),
        "seeds_per_chunk": grid.seeds_per_chunk,
    }
    st = ChunkStore(store, config, grid)
    chunks = grid.chunks()
    done, corrupt = st.done(chunks, verify)
    todo = [c for c in chunks if c.key not in done]
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
                if f.status == "error":
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
            if len(in_flight) <= max_in_flight // 2:
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
