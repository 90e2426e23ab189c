"""A crash-safe, resumable chunk store: one file per finished chunk.

Layout of a store directory::

    store.json          format, config hash, config, the grid of the latest sweep (written with the
                    first chunk: a store without chunks binds no configuration)
    chunks/<key>.npz    one finished chunk (written once: temp file, fsync, rename)
    done/<key>.json     its done-marker: sha256 and size of the chunk file, written last

A chunk counts as done only when its marker exists and the chunk file matches the marker's size
(and, with ``verify="hash"``, its sha256). A crash at any point leaves either a complete chunk with
its marker, or no marker: a half-written or corrupted chunk is found on the next run and recomputed.
One driver writes to a store at a time.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from gradcomp.scaleout.grid import Chunk, Grid

__all__ = ["FORMAT", "SUFFIX", "ChunkStore", "ConfigMismatchError", "config_hash"]

SUFFIX = ".npz"  # chunk files: gradcomp.scaleout.chunkio.encode

FORMAT = 2
Verify = Literal["hash", "size"]


class ConfigMismatchError(ValueError):
    """The store was written by a different configuration."""


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of ``config`` (what determines a sweep's results)."""
    text = json.dumps(dict(config), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _write_file(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` and fsync it (a hook tests replace to simulate a full disk)."""
    with open(path, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, payload: bytes) -> None:
    """Write to a temp name in the same directory, fsync, rename over ``path``, fsync the dir."""
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        _write_file(tmp, payload)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _diff(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += _diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: store has {a!r}, this sweep has {b!r}")
    return out


class ChunkStore:
    """Create or open the store at ``path`` for a sweep with ``config`` over ``grid``.

    Args:
        path: the store directory (created if missing).
        config: everything that determines the results (experiment name and config, chunking).
        grid: the grid of this sweep (stored, so :func:`open_store` knows which chunks form it).

    Raises:
        ConfigMismatchError: the store holds finished chunks of a different config (a store
            without finished chunks takes the new config).
        PermissionError: the path cannot be written.
    """

    def __init__(self, path: str | os.PathLike[str], config: Mapping[str, Any], grid: Grid):
        self.path = Path(path)
        self.config = json.loads(json.dumps(dict(config), sort_keys=True, default=str))
        self.hash = config_hash(self.config)
        self.grid = grid
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            (self.path / "chunks").mkdir(exist_ok=True)
            (self.path / "done").mkdir(exist_ok=True)
            probe = self.path / f".probe.{os.getpid()}"
            _write_file(probe, b"")
            probe.unlink()
        except OSError as err:
            raise PermissionError(
                f"cannot write the sweep store at {self.path} ({err.strerror or err}); "
                "choose a writable store path"
            ) from err
        self._lock = threading.Lock()
        self._meta_written = False
        meta = self.path / "store.json"
        has_chunks = any(p.name.endswith(".json") for p in os.scandir(self.path / "done"))
        if meta.exists() and has_chunks:
            old = json.loads(meta.read_text())
            if old.get("config_hash") != self.hash:
                lines = _diff(old.get("config", {}), self.config) or ["(hash differs)"]
                raise ConfigMismatchError(
                    f"the store at {self.path} holds results of a different configuration "
                    f"(hash {old.get('config_hash', '?')[:12]} vs {self.hash[:12]}): "
                    + "; ".join(lines)
                    + ". Use a new store path for this configuration (results are never mixed)."
                )
        if has_chunks:
            self._write_meta()  # records this sweep's grid
        # else: store.json is written with the first chunk, so a sweep that stored nothing
        # (bad input, an unreachable scheduler) leaves no configuration behind
        for tmp in (self.path / "chunks").glob(".*.tmp.*"):
            tmp.unlink(missing_ok=True)  # left by a driver killed mid-write
        for tmp in (self.path / "done").glob(".*.tmp.*"):
            tmp.unlink(missing_ok=True)

    def _write_meta(self) -> None:
        meta = {
            "format": FORMAT,
            "config_hash": self.hash,
            "config": self.config,
            "grid": json.loads(self.grid.to_json()),
        }
        _atomic_write(self.path / "store.json", json.dumps(meta, indent=1).encode())
        self._meta_written = True

    def chunk_path(self, key: str) -> Path:
        """Where chunk ``key`` lives."""
        return self.path / "chunks" / f"{key}{SUFFIX}"

    def marker_path(self, key: str) -> Path:
        """Where chunk ``key``'s done-marker lives."""
        return self.path / "done" / f"{key}.json"

    def check(self, key: str, verify: Verify = "hash") -> bool:
        """Whether chunk ``key`` is done and intact (marker present, size and hash match)."""
        return _check(self.path, key, verify)

    def done(self, chunks: list[Chunk], verify: Verify = "hash") -> tuple[set[str], list[str]]:
        """Split ``chunks`` into finished keys and corrupt keys (whose marker is removed).

        Returns:
            ``(done, corrupt)``: keys that are done and intact, and keys whose marker existed but
            whose file was missing, truncated or altered; their markers are deleted so they are
            recomputed.
        """
        markers = {p.name[:-5] for p in os.scandir(self.path / "done") if p.name.endswith(".json")}
        done, corrupt = set(), []
        for c in chunks:
            if c.key not in markers:
                continue
            if _check(self.path, c.key, verify):
                done.add(c.key)
            else:
                corrupt.append(c.key)
                self.marker_path(c.key).unlink(missing_ok=True)
        return done, corrupt

    def write(self, chunk: Chunk, payload: bytes) -> None:
        """Write a finished chunk once, then its done-marker.

        Raises:
            OSError: the write failed (e.g. ``ENOSPC``); the chunk is not marked done and every
                previously finished chunk is untouched.
        """
        key = chunk.key
        try:
            if not self._meta_written:
                with self._lock:  # chunks are written from a few threads at once
                    if not self._meta_written:
                        self._write_meta()
            self.marker_path(key).unlink(missing_ok=True)
            _atomic_write(self.chunk_path(key), payload)
            marker = {
                "key": key,
                "size": len(payload),
                "sha256": hashlib.sha256(payload).hexdigest(),
                "cell": chunk.cell,
                "seeds": [chunk.seed_start, chunk.seed_stop],
                "config_hash": self.hash,
            }
            _atomic_write(self.marker_path(key), json.dumps(marker).encode())
        except OSError as err:
            what = "the disk is full" if err.errno == errno.ENOSPC else (err.strerror or str(err))
            raise OSError(
                err.errno,
                f"writing chunk {key} to {self.path} failed: {what}. The chunk is not marked done; "
                "finished chunks are kept. Fix the cause and rerun the same sweep to resume.",
            ) from err


def _check(root: Path, key: str, verify: Verify) -> bool:
    try:
        marker = json.loads((root / "done" / f"{key}.json").read_bytes())
        path = root / "chunks" / f"{key}{SUFFIX}"
        if path.stat().st_size != marker["size"]:
            return False
        if verify == "hash":
            return hashlib.sha256(path.read_bytes()).hexdigest() == marker["sha256"]
        return True
    except (OSError, ValueError, KeyError):
        return False


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``store.json`` of a store, or a ``ValueError`` saying it is not one."""
    meta = Path(path) / "store.json"
    if not meta.exists():
        raise ValueError(f"{path} is not a gradcomp sweep store (no store.json)")
    return dict(json.loads(meta.read_text()))
