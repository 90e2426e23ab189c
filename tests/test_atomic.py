"""gradcomp._atomic: the one atomic-write helper (files, folders, failures)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gradcomp._atomic import atomic_write, replacing
from gradcomp.schedule import log_steps, logarithmic


@pytest.mark.parametrize("durable", [False, True])
def test_bytes_text_and_writers_replace_the_target(tmp_path: Path, durable: bool) -> None:
    target = tmp_path / "x.json"
    assert atomic_write(target, b"one", durable=durable) == target
    atomic_write(target, "två", durable=durable)
    assert target.read_text(encoding="utf-8") == "två"
    atomic_write(target, lambda p: p.write_bytes(b"three"), durable=durable)
    assert target.read_bytes() == b"three"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_a_failed_write_keeps_the_old_target_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")

    def fails(p: Path) -> None:
        p.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(target, fails)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_a_folder_replaces_a_folder(tmp_path: Path) -> None:
    target = tmp_path / "store.zarr"
    target.mkdir()
    (target / "old").write_text("old")
    with replacing(target, durable=True) as tmp:
        tmp.mkdir()
        (tmp / "new").write_text("new")
        assert not (target / "new").exists()  # nothing visible before the block ends
    assert sorted(p.name for p in target.iterdir()) == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["store.zarr"]


def test_log_steps_are_the_rounded_geomspace() -> None:
    ref = sorted({round(1 * (500 / 1) ** (k / 29)) for k in range(30)})
    assert log_steps(1, 500, 30) == ref
    assert {s for s in range(501) if logarithmic(1, 500, 30)(s)} == {0, *ref}
    assert log_steps(7, 7, 5) == [7]
    with pytest.raises(ValueError, match="start"):
        log_steps(0, 5, 3)
    assert np.all(np.diff(log_steps(3, 10**6, 200)) > 0)
