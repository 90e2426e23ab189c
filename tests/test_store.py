"""The sweep grid and the crash-safe chunk store (no Dask cluster needed)."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest
import xarray as xr

from gradcomp.scaleout import ChunkStore, ConfigMismatchError, Grid, Toy, open_store
from gradcomp.scaleout import store as store_mod
from gradcomp.scaleout.chunkio import decode, encode, run_chunk

AXES = {"width": [2, 3], "lr": [0.0, 0.5]}
CONFIG = {"experiment": "toy", "experiment_config": {"noise": 0.1}, "seeds_per_chunk": 7}


def reference(exp: Toy, axes: dict, seeds: range) -> xr.Dataset:
    """Obviously correct: every cell computed in one call over all its seeds, then stacked."""
    rows = []
    for w in axes["width"]:
        cols = [exp({"width": w, "lr": lr}, seeds) for lr in axes["lr"]]
        rows.append(xr.concat(cols, xr.DataArray(axes["lr"], dims="lr", name="lr")))
    return xr.concat(rows, xr.DataArray(axes["width"], dims="width", name="width"))


def fill(path, grid: Grid, exp: Toy, skip: int = 0) -> ChunkStore:
    st = ChunkStore(path, CONFIG, grid)
    for c in grid.chunks()[skip:]:
        _, payload, _ = run_chunk(c, exp)
        st.write(c, payload)
    return st


def test_grid_keys_are_deterministic_and_aligned() -> None:
    g = Grid.build(AXES, range(3, 20), 7)
    assert g.seed_blocks() == [(3, 7), (7, 14), (14, 20)]
    keys = [c.key for c in g.chunks()]
    assert len(keys) == len(set(keys)) == 4 * 3
    assert keys[0] == "width=2,lr=0.0,seed=0000000003-0000000007"
    assert keys == [c.key for c in Grid.build(AXES, range(3, 20), 7).chunks()]
    # extending the seed range keeps every aligned chunk's key
    longer = {c.key for c in Grid.build(AXES, range(3, 28), 7).chunks()}
    assert set(keys[:2]) <= longer
    assert Grid.from_json(g.to_json()) == g


@pytest.mark.parametrize(
    ("axes", "seeds", "k", "match"),
    [
        ({"depth": [1]}, range(4), 2, "unknown grid axis 'depth'.*accepts: lr, width"),
        ({"width": []}, range(4), 2, "'width' is empty"),
        ({"width": [2, 2]}, range(4), 2, "duplicate"),
        ({"width": [2]}, range(0), 2, "seed range .* is empty"),
        ({"width": [2]}, range(5, 3), 2, "empty"),
        ({"width": [2]}, range(4), 0, "seeds_per_chunk"),
        ({"seed": [1]}, range(4), 2, "seeds="),
        ({"width": "23"}, range(4), 2, "sequence of values"),
        ({"width": ["a/b"]}, range(4), 2, "simple string"),
        ({"width": [float("nan")]}, range(4), 2, "not finite"),
    ],
)
def test_grid_rejects_bad_input(axes, seeds, k, match) -> None:
    with pytest.raises(ValueError, match=match):
        Grid.build(axes, seeds, k, allowed=Toy().axes())


def test_store_roundtrip_equals_reference(tmp_path) -> None:
    exp, seeds = Toy(), range(3, 20)
    grid = Grid.build(AXES, seeds, 7)
    fill(tmp_path / "s", grid, exp)
    ref = reference(exp, AXES, seeds)
    ds = open_store(tmp_path / "s")
    assert ds["a"].chunks is not None  # lazy
    xr.testing.assert_equal(ds[["a", "b"]].load(), ref[["a", "b"]].transpose(*ds.a.dims))
    assert ds.attrs["sweep_config_hash"] == store_mod.config_hash(CONFIG)
    assert ds.a.attrs["long_name"] == "Alice's outcome" and ds.lr.attrs["units"] == "1"
    ds.close()
    # a chunk rewritten by other data is seen by the next open
    st = ChunkStore(tmp_path / "s", CONFIG, grid)
    c = grid.chunks()[0]
    st.write(c, run_chunk(c, Toy(noise=0.5))[1])
    again = open_store(tmp_path / "s").load()
    assert not again.a.equals(ds.a.load())
    xr.testing.assert_equal(again.a.isel(seed=slice(7, None)), ds.a.isel(seed=slice(7, None)))


def test_encode_decode_roundtrip() -> None:
    ds = xr.Dataset(
        {
            "x": (("seed", "task"), np.array([[1.5, np.nan], [0.0, -2.0]]), {"units": "m"}),
            "k": ("seed", np.array([1, -1], np.int8)),
        },
        coords={"seed": [3, 4], "task": ["A", "B"], "lr": ("seed", [0.1, 0.2])},
        attrs={"n": np.int64(3), "s": "text", "v": np.array([1.0, 2.0])},
    )
    back = decode(encode(ds))
    xr.testing.assert_identical(back, ds.assign_attrs(n=3, v=[1.0, 2.0]))
    assert back.k.dtype == np.int8 and "lr" in back.coords
    with pytest.raises(ValueError, match="dtype object"):
        encode(xr.Dataset({"o": ("seed", np.array([{}, {}], dtype=object))}))


def test_corrupt_and_half_written_chunks_are_detected(tmp_path) -> None:
    grid = Grid.build(AXES, range(0, 14), 7)
    chunks = grid.chunks()
    st = fill(tmp_path / "s", grid, Toy())
    assert st.done(chunks) == ({c.key for c in chunks}, [])
    files = st.chunk_files(chunks[0].key)
    assert len(files) == 2 and all(f.is_file() for f in files)  # one Zarr chunk file per variable
    assert not set(files) & {f for c in chunks[1:] for f in st.chunk_files(c.key)}
    # 1. a flipped byte (same size): only the hash check sees it
    p = files[0]
    raw = bytearray(p.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    p.write_bytes(bytes(raw))
    # 2. a truncated file
    q = st.chunk_files(chunks[1].key)[1]
    q.write_bytes(q.read_bytes()[:10])
    # 3. a chunk file whose done-marker was never written (crash between the two renames)
    st.marker_path(chunks[2].key).unlink()
    assert not st.check(chunks[0].key) and st.check(chunks[0].key, verify="size")
    done, corrupt = st.done(chunks)
    assert sorted(corrupt) == sorted([chunks[0].key, chunks[1].key])
    assert done == {c.key for c in chunks[3:]}
    assert not st.marker_path(chunks[0].key).exists()  # so it is recomputed
    with pytest.raises(ValueError, match="lacks 3 of 8 chunks"):
        open_store(tmp_path / "s")


def test_leftover_temp_files_are_removed(tmp_path) -> None:
    grid = Grid.build(AXES, range(0, 7), 7)
    st = fill(tmp_path / "s", grid, Toy())
    junk = st.path / "done" / ".x.json.tmp.123"
    junk.write_bytes(b"half")
    layout = st.path / ".data.zarr.tmp.123"  # a layout being built when the driver was killed
    layout.mkdir()
    (layout / "zarr.json").write_bytes(b"{")
    ChunkStore(tmp_path / "s", CONFIG, grid)
    assert not junk.exists() and not layout.exists()


def test_differing_config_is_refused(tmp_path) -> None:
    grid = Grid.build(AXES, range(0, 7), 7)
    fill(tmp_path / "s", grid, Toy())
    other = {**CONFIG, "experiment_config": {"noise": 0.2}}
    with pytest.raises(ConfigMismatchError, match=r"experiment_config.noise: store has 0.1"):
        ChunkStore(tmp_path / "s", other, grid)
    # the store is untouched
    assert json.loads((tmp_path / "s" / "store.json").read_text())["config"] == CONFIG


def test_unwritable_store_path(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(PermissionError, match="cannot write the sweep store"):
        ChunkStore(blocker / "store", CONFIG, Grid.build(AXES, range(4), 2))


def test_full_disk_leaves_chunk_undone_and_keeps_finished_work(tmp_path, monkeypatch) -> None:
    grid = Grid.build(AXES, range(0, 14), 7)
    chunks = grid.chunks()
    st = fill(tmp_path / "s", grid, Toy())
    st.marker_path(chunks[3].key).unlink()
    real = store_mod._write_region

    def full(lay, chunk, part):
        real(lay, chunk, part)
        victim = st.path / lay.files(chunk)[0]
        victim.write_bytes(victim.read_bytes()[:10])  # partly written, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_mod, "_write_region", full)
    _, payload, _ = run_chunk(chunks[3], Toy(noise=0.3))
    with pytest.raises(OSError, match=r"disk is full.*not marked done") as info:
        st.write(chunks[3], payload)
    assert info.value.errno == errno.ENOSPC
    assert not list((st.path / "done").glob(".*tmp*"))
    done, corrupt = st.done(chunks)
    assert done == {c.key for c in chunks} - {chunks[3].key} and not corrupt
    monkeypatch.setattr(store_mod, "_write_region", real)
    st.write(chunks[3], run_chunk(chunks[3], Toy())[1])  # the rerun
    ref = reference(Toy(), AXES, range(0, 14))
    ds = open_store(st.path, verify="hash")
    xr.testing.assert_equal(ds[["a", "b"]].load(), ref[["a", "b"]].transpose(*ds.a.dims))


def test_run_chunk_validates_experiment_output() -> None:
    chunk = Grid.build(AXES, range(4), 4).chunks()[0]

    class Bad(Toy):
        def __call__(self, cell, seeds):
            return super().__call__(cell, range(seeds.start + 1, seeds.stop + 1))

    with pytest.raises(ValueError, match="returned seeds"):
        run_chunk(chunk, Bad())
    _, payload, tally = run_chunk(chunk, Toy(noise=0.0))
    ds = decode(payload)
    assert ds.sizes["width"] == ds.sizes["lr"] == 1 and ds.sizes["seed"] == 4
    ab = (ds.a * ds.b).isel(step=-1, width=0, lr=0).sum("seed").transpose("alice", "bob")
    np.testing.assert_array_equal(tally[0], ab.values)
    assert tally[1] == 4


def test_importing_gradcomp_and_scaleout_does_not_import_dask() -> None:
    import subprocess
    import sys

    code = (
        "import sys, gradcomp, gradcomp.scaleout; from gradcomp.scaleout import sweep; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_store_without_chunks_binds_no_configuration(tmp_path) -> None:
    grid = Grid.build(AXES, range(0, 7), 7)
    ChunkStore(tmp_path / "s", CONFIG, grid)  # e.g. a sweep that failed before its first chunk
    assert not (tmp_path / "s" / "store.json").exists()
    other = {**CONFIG, "experiment_config": {"noise": 0.2}}
    st = ChunkStore(tmp_path / "s", other, grid)  # the corrected sweep is not refused
    c = grid.chunks()[0]
    st.write(c, run_chunk(c, Toy(noise=0.2))[1])
    assert json.loads((tmp_path / "s" / "store.json").read_text())["config"] == other
    # a store.json left by an older version with no finished chunk does not lock either
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "store.json").write_text(
        json.dumps({"format": 2, "config_hash": "0" * 64, "config": {}, "grid": {}})
    )
    ChunkStore(tmp_path / "t", CONFIG, grid)
    # once a chunk is stored, a different configuration is refused, in one line
    with pytest.raises(ConfigMismatchError) as info:
        ChunkStore(tmp_path / "s", CONFIG, grid)
    assert "\n" not in str(info.value) and "noise: store has 0.2" in str(info.value)


@pytest.mark.parametrize("keep", [0, 100, 0.5, -1])
def test_damaged_layout_metadata_is_an_error_and_a_rerun_recomputes(tmp_path, keep) -> None:
    exp, seeds = Toy(), range(0, 14)
    grid = Grid.build(AXES, seeds, 7)
    fill(tmp_path / "s", grid, exp)
    target = tmp_path / "s" / "data.zarr" / "zarr.json"  # the consolidated metadata
    raw = target.read_bytes()
    cut = int(len(raw) * keep) if isinstance(keep, float) else keep % len(raw)
    target.write_bytes(raw[:cut])  # truncated: empty, mid-header, half, one byte short
    with pytest.raises(ValueError, match=r"unreadable data\.zarr"):
        open_store(tmp_path / "s")
    st = ChunkStore(tmp_path / "s", CONFIG, grid)  # the markers vouch for nothing now
    assert st.done(grid.chunks()) == (set(), [])
    fill(tmp_path / "s", grid, exp)
    ds = open_store(tmp_path / "s")
    ref = reference(exp, AXES, seeds)
    xr.testing.assert_equal(ds[["a", "b"]].load(), ref[["a", "b"]].transpose(*ds.a.dims))


def test_layout_is_zarr_opened_lazily_from_consolidated_metadata(tmp_path) -> None:
    import zarr

    grid = Grid.build(AXES, range(3, 20), 7)
    fill(tmp_path / "s", grid, Toy())
    meta = json.loads((tmp_path / "s" / "data.zarr" / "zarr.json").read_bytes())
    assert meta["zarr_format"] == 3 and "consolidated_metadata" in meta
    # one Zarr chunk per sweep chunk: a cell × a block of seeds aligned to multiples of 7
    arr = zarr.open_array(tmp_path / "s" / "data.zarr" / "a", mode="r")
    assert arr.chunks[:3] == (1, 1, 7) and arr.shape[:3] == (2, 2, 20)
    # opening reads no chunk: with every data file gone it still opens (lazily)
    for f in (tmp_path / "s" / "data.zarr").glob("[ab]/c/**/*"):
        if f.is_file():
            f.unlink()
    ds = open_store(tmp_path / "s")
    assert ds.sizes["seed"] == 17 and int(ds.seed[0]) == 3 and ds["a"].chunks is not None
    with pytest.raises(ValueError, match="lacks 12 of 12"):
        open_store(tmp_path / "s", verify="size")


def test_a_larger_grid_grows_the_layout_and_keeps_finished_chunks(tmp_path) -> None:
    exp = Toy()
    small = Grid.build(AXES, range(3, 14), 7)
    st = fill(tmp_path / "s", small, exp)
    marker = json.loads(st.marker_path(small.chunks()[0].key).read_bytes())
    axes = {"width": [3, 4, 2], "lr": [0.0, 0.5]}
    big = Grid.build(axes, range(0, 21), 7)
    st = ChunkStore(tmp_path / "s", CONFIG, big)
    done, corrupt = st.done(big.chunks())
    # seed block [3, 7) of the small grid is not block [0, 7) of the big one
    assert done == {c.key for c in small.chunks() if c.seed_start == 7} and not corrupt
    for c in big.chunks():
        if c.key not in done:
            st.write(c, run_chunk(c, exp)[1])
    got = open_store(tmp_path / "s", verify="hash")
    ref = reference(exp, axes, range(0, 21))
    xr.testing.assert_equal(got[["a", "b"]].load(), ref[["a", "b"]].transpose(*got.a.dims))
    # the small grid's values are still there (block [3, 7) shares its Zarr chunk with block
    # [0, 7), so its file sizes changed: a sweep over the small grid would check it again)
    old = open_store(tmp_path / "s", grid=small)
    ref = reference(exp, AXES, range(3, 14))
    xr.testing.assert_equal(old[["a", "b"]].load(), ref[["a", "b"]].transpose(*old.a.dims))
    assert (
        json.loads(st.marker_path(small.chunks()[0].key).read_bytes())["sha256"]
        == (marker["sha256"])
    )
    with pytest.raises(ValueError, match=r"grid axes \['width', 'lr'\], this sweep has"):
        ChunkStore(tmp_path / "s", CONFIG, Grid.build({"width": [2]}, range(7), 7))


def test_chunks_must_agree_with_the_layout(tmp_path) -> None:
    grid = Grid.build(AXES, range(0, 7), 7)
    st = ChunkStore(tmp_path / "s", CONFIG, grid)
    first, second = grid.chunks()[:2]
    st.write(first, run_chunk(first, Toy())[1])
    part = decode(run_chunk(second, Toy())[1])
    with pytest.raises(ValueError, match="coordinate 'step' differs"):
        st.write(second, part.assign_coords(step=[5]))
    with pytest.raises(ValueError, match=r"has variables \['a'\]"):
        st.write(second, part.drop_vars("b"))
    assert not st.marker_path(second.key).exists()


def test_a_store_of_an_older_format_is_refused(tmp_path) -> None:
    grid = Grid.build(AXES, range(0, 7), 7)
    fill(tmp_path / "s", grid, Toy())
    meta = json.loads((tmp_path / "s" / "store.json").read_text())
    (tmp_path / "s" / "store.json").write_text(json.dumps({**meta, "format": 2}))
    with pytest.raises(ValueError, match="older gradcomp"):
        ChunkStore(tmp_path / "s", CONFIG, grid)
    with pytest.raises(ValueError, match="older gradcomp"):
        open_store(tmp_path / "s")


def test_check_cells_uses_the_experiments_own_validator() -> None:
    import importlib
    from dataclasses import dataclass

    check_cells = importlib.import_module("gradcomp.scaleout.sweep").check_cells

    @dataclass(frozen=True)
    class Picky(Toy):
        def validate(self, cell: dict) -> None:
            if cell["width"] == 3:
                raise ValueError("width 3 is\nnot allowed")

    check_cells(Picky(), Grid.build({"width": [1, 2]}, range(4), 2))
    with pytest.raises(ValueError, match=r"^grid cell width=3,lr=0.5: width 3 is not allowed$"):
        check_cells(Picky(), Grid.build({"width": [2, 3], "lr": [0.5]}, range(4), 2))
    check_cells(Toy(), Grid.build({"width": [3]}, range(4), 2))  # no validator: nothing to check


def test_a_chunk_equal_to_the_fill_value_still_has_its_files(tmp_path) -> None:
    """Zarr skips chunks equal to the fill value unless told not to; the markers need the files."""
    grid = Grid.build({"width": [2]}, range(0, 4), 4)
    st = ChunkStore(tmp_path / "s", CONFIG, grid)
    c = grid.chunks()[0]
    part = decode(run_chunk(c, Toy())[1])
    part["z"] = xr.zeros_like(part.a, dtype=bool)  # all False: bool's fill value
    st.write(c, part)
    assert all(f.is_file() for f in st.chunk_files(c.key)) and len(st.chunk_files(c.key)) == 3
    assert st.check(c.key) and not bool(open_store(tmp_path / "s", verify="hash").z.any())
