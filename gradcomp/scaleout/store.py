"""A crash-safe, resumable sweep store: a Zarr v3 layout written chunk by chunk, by region.

Layout of a store directory::

    store.json          format, config hash, config, the grid of the latest sweep (written with the
                        first chunk: a store without chunks binds no configuration)
    data.zarr/          the whole grid's arrays (Zarr v3, consolidated metadata), laid out once with
                        the first chunk (:mod:`gradcomp.scaleout.layout`); each chunk writes its
                        region (one Zarr chunk file per variable), fsynced
    done/<key>.json     its done-marker: sha256 of the chunk's values and the size of each of its
                        Zarr chunk files, written last (temp file, fsync, rename)

A chunk counts as done only when its marker exists and its files match the marker's sizes (and,
with ``verify="hash"``, the values read back match its sha256). A crash at any point leaves either
a complete chunk with its marker, or no marker: a half-written or corrupted chunk is found on the
next run and recomputed. One driver writes to a store at a time.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import xarray as xr

import gradcomp.scaleout.layout as _layout
from gradcomp._atomic import atomic_write, fsync, replacing
from gradcomp.scaleout.grid import Chunk, Grid
from gradcomp.scaleout.layout import DATA, Layout

__all__ = ["FORMAT", "ChunkStore", "ConfigMismatchError", "config_hash"]

FORMAT = 3  # 2: one .npz file per chunk, consolidated into one netCDF file when opened
Verify = Literal["hash", "size"]


class ConfigMismatchError(ValueError):
    """The store was written by a different configuration."""


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of ``config`` (what determines a sweep's results)."""
    text = json.dumps(dict(config), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


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

    A grid that does not fit the store's layout (other values of an axis, seeds outside its range)
    grows the layout to cover both: the finished chunks are copied into the larger layout once.

    Raises:
        ConfigMismatchError: the store holds finished chunks of a different config (a store
            without finished chunks takes the new config).
        ValueError: the store holds finished chunks over other grid axes, or was written by an
            older gradcomp (format 2: ``.npz`` chunks).
        PermissionError: the path cannot be written.
    """

    def __init__(self, path: str | os.PathLike[str], config: Mapping[str, Any], grid: Grid):
        self.path = Path(path)
        self.config = json.loads(json.dumps(dict(config), sort_keys=True, default=str))
        self.hash = config_hash(self.config)
        self.grid = grid
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            (self.path / "done").mkdir(exist_ok=True)
            probe = self.path / f".probe.{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise PermissionError(
                f"cannot write the sweep store at {self.path} ({err.strerror or err}); "
                "choose a writable store path"
            ) from err
        self._lock = threading.Lock()
        self._meta_written = False
        self._layout: Layout | None = None
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
            if old.get("format") != FORMAT:
                raise ValueError(
                    f"the store at {self.path} was written by an older gradcomp (store format "
                    f"{old.get('format')}, this one writes {FORMAT}); use a new store path"
                )
        for tmp in (self.path / "done").glob(".*.tmp.*"):
            tmp.unlink(missing_ok=True)  # left by a driver killed mid-write
        for tmp in self.path.glob(f".{DATA}.*"):
            if tmp.name == f".{DATA}.replaced" and not (self.path / DATA).exists():
                os.replace(tmp, self.path / DATA)  # killed while swapping in a grown layout
            else:
                shutil.rmtree(tmp, ignore_errors=True)
        if has_chunks:
            try:
                self._layout = Layout(self.path / DATA)
            except Exception:  # zarr and xarray raise several kinds on a missing or damaged layout
                # no readable layout: the markers vouch for nothing; every chunk is recomputed
                for p in (self.path / "done").glob("*.json"):
                    p.unlink()
                has_chunks = False
        if has_chunks:
            assert self._layout is not None
            lo, hi = grid.seed_start, grid.seed_stop
            if not self._layout.covers(grid.names, grid.axes, lo, hi):
                self._grow()
            self._write_meta()  # records this sweep's grid
        # else: store.json and the layout are written with the first chunk, so a sweep that stored
        # nothing (bad input, an unreachable scheduler) leaves no configuration behind

    def _write_meta(self) -> None:
        meta = {
            "format": FORMAT,
            "config_hash": self.hash,
            "config": self.config,
            "grid": json.loads(self.grid.to_json()),
        }
        atomic_write(self.path / "store.json", json.dumps(meta, indent=1).encode(), durable=True)
        self._meta_written = True

    def _attrs(self, part: xr.Dataset) -> dict[str, Any]:
        from gradcomp.provenance import provenance

        attrs = {k: str(v) if isinstance(v, str) else v for k, v in part.attrs.items()}
        attrs.update(provenance(self.config))
        attrs["sweep_config_hash"] = self.hash
        return attrs

    def _create(self, part: xr.Dataset) -> None:
        """Lay out the store for this sweep's grid from its first chunk, then write store.json."""
        g = self.grid
        k = g.seeds_per_chunk
        _layout.create(
            self.path / DATA, part, g.axes, g.seed_start, g.seed_stop, k, self._attrs(part)
        )
        fsync(self.path)
        self._layout = Layout(self.path / DATA)
        self._write_meta()

    def _grow(self) -> None:
        """Lay the store out over the union of its layout and this grid; copy finished chunks."""
        old = self._layout
        assert old is not None
        g = self.grid
        if tuple(g.names) != old.names:
            raise ValueError(
                f"the store at {self.path} holds chunks over the grid axes {list(old.names)}, "
                f"this sweep has {list(g.names)}; use a new store path for another set of axes"
            )
        axes = tuple(
            (n, (*vals, *(v for v in dict(g.axes)[n] if v not in vals))) for n, vals in old.axes
        )
        lo, hi = min(old.seed_lo, g.seed_start), max(old.seed_hi, g.seed_stop)
        proto = _layout.open_layout(old.path, chunks={})
        finished = [c for c in map(self._marked, self._marker_keys()) if c is not None]
        with replacing(self.path / DATA, durable=True) as grown:  # the old one: .replaced
            _layout.create(grown, proto, axes, lo, hi, old.k, proto.attrs)
            new = Layout(grown)
            for chunk, marker in finished:
                if new.write(chunk, old.read(chunk)) != marker["sha256"]:
                    raise RuntimeError(f"internal: chunk {chunk.key} changed while the store grew")
            proto.close()
        self._layout = Layout(self.path / DATA)
        for chunk, marker in finished:  # the files of the new layout
            marker["files"] = self._sizes(chunk)
            atomic_write(self.marker_path(chunk.key), json.dumps(marker).encode(), durable=True)

    def _marker_keys(self) -> list[str]:
        return [p.name[:-5] for p in os.scandir(self.path / "done") if p.name.endswith(".json")]

    def _marked(self, key: str) -> tuple[Chunk, dict[str, Any]] | None:
        return _marked(self.path, key)

    def _sizes(self, chunk: Chunk) -> dict[str, int]:
        assert self._layout is not None
        return _sizes(self.path, self._layout, chunk)

    def chunk_files(self, key: str) -> list[Path]:
        """The Zarr chunk files that hold finished chunk ``key`` (one per variable)."""
        marked = self._marked(key)
        if marked is None or self._layout is None:
            return []
        return [self.path / f for f in self._layout.files(marked[0])]

    def marker_path(self, key: str) -> Path:
        """Where chunk ``key``'s done-marker lives."""
        return self.path / "done" / f"{key}.json"

    def check(self, key: str, verify: Verify = "hash") -> bool:
        """Whether chunk ``key`` is done and intact (marker present, sizes and hash match)."""
        return check_chunk(self.path, self._layout, key, verify)

    def done(self, chunks: list[Chunk], verify: Verify = "hash") -> tuple[set[str], list[str]]:
        """Split ``chunks`` into finished keys and corrupt keys (whose marker is removed).

        Returns:
            ``(done, corrupt)``: keys that are done and intact, and keys whose marker existed but
            whose files were missing, truncated or altered; their markers are deleted so they are
            recomputed.
        """
        markers = set(self._marker_keys())
        done, corrupt = set(), []
        for c in chunks:
            if c.key not in markers:
                continue
            if self.check(c.key, verify):
                done.add(c.key)
            else:
                corrupt.append(c.key)
                self.marker_path(c.key).unlink(missing_ok=True)
        return done, corrupt

    def write(self, chunk: Chunk, payload: bytes | xr.Dataset) -> None:
        """Write a finished chunk into its region, then its done-marker.

        Args:
            chunk: the chunk.
            payload: its Dataset, or the bytes :func:`gradcomp.scaleout.chunkio.encode` made.

        Raises:
            OSError: the write failed (e.g. ``ENOSPC``); the chunk is not marked done and every
                previously finished chunk is untouched.
            ValueError: the chunk's variables or non-grid coordinates differ from the first's.
        """
        from gradcomp.scaleout.chunkio import decode, decode_variables

        key = chunk.key
        part: xr.Dataset | dict[str, xr.Variable] = payload  # type: ignore[assignment]
        try:
            if self._layout is None or not self._meta_written:
                with self._lock:  # chunks are written from a few threads at once
                    if self._layout is None:
                        if isinstance(payload, bytes):
                            part = decode(payload)
                        self._create(part)  # type: ignore[arg-type]
                    elif not self._meta_written:
                        self._write_meta()
            if isinstance(part, bytes):
                part = decode_variables(part)[0]
            assert self._layout is not None
            self.marker_path(key).unlink(missing_ok=True)
            digest = _write_region(self._layout, chunk, part)
            files = self._sizes(chunk)
            list(_FSYNC.map(fsync, [self.path / f for f in files]))
            marker = {
                "key": key,
                "sha256": digest,
                "files": files,
                "cell": chunk.cell,
                "seeds": [chunk.seed_start, chunk.seed_stop],
                "config_hash": self.hash,
            }
            atomic_write(self.marker_path(key), json.dumps(marker).encode(), durable=True)
        except OSError as err:
            what = "the disk is full" if err.errno == errno.ENOSPC else (err.strerror or str(err))
            raise OSError(
                err.errno,
                f"writing chunk {key} to {self.path} failed: {what}. The chunk is not marked done; "
                "finished chunks are kept. Fix the cause and rerun the same sweep to resume.",
            ) from err


def _marked(root: Path, key: str) -> tuple[Chunk, dict[str, Any]] | None:
    """The chunk a done-marker describes, and the marker (None if missing or unreadable)."""
    try:
        marker = json.loads((root / "done" / f"{key}.json").read_bytes())
        chunk = Chunk(tuple(marker["cell"].items()), *marker["seeds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (chunk, marker) if chunk.key == key else None


def _sizes(root: Path, lay: Layout, chunk: Chunk) -> dict[str, int]:
    return {f: (root / f).stat().st_size for f in lay.files(chunk)}


def check_chunk(root: Path, lay: Layout | None, key: str, verify: Verify) -> bool:
    """Whether chunk ``key`` of the store at ``root`` (layout ``lay``) is done and intact."""
    marked = _marked(root, key)
    if marked is None or lay is None:
        return False
    chunk, marker = marked
    try:
        if _sizes(root, lay, chunk) != marker["files"]:
            return False
        return verify != "hash" or lay.digest(chunk) == marker["sha256"]
    except Exception:  # a missing file, or one that no longer decodes (codec errors vary)
        return False


#: fsyncs of a chunk's files run side by side (the file system may commit them together)
_FSYNC = ThreadPoolExecutor(max_workers=8, thread_name_prefix="gradcomp-fsync")


def _write_region(lay: Layout, chunk: Chunk, part: xr.Dataset | Mapping[Any, xr.Variable]) -> str:
    """Write ``part`` into ``chunk``'s region (a hook tests replace to simulate a full disk)."""
    return lay.write(chunk, part)


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``store.json`` of a store, or a ``ValueError`` saying it is not one."""
    meta = Path(path) / "store.json"
    if not meta.exists():
        raise ValueError(f"{path} is not a gradcomp sweep store (no store.json)")
    return dict(json.loads(meta.read_text()))
