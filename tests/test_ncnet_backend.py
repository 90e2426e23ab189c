"""NCnet ``engine="auto"``: a C kernel that cannot be built or loaded falls back to torch."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from gradcomp.ncnet import NCnetConfig, _compiled, run
from gradcomp.ncnet._compiled import CKernelUnavailableWarning

CFG = NCnetConfig(steps=20, trace_every=10, dtype="float64")

FAILING = "#!/bin/sh\necho 'cc: error: unsupported option -fopenmp' >&2\nexit 1\n"
# "builds" (exit 0) but writes a file that is not a shared library: dlopen fails
GARBAGE = '#!/bin/sh\nfor a; do case "$prev" in -o) echo garbage > "$a";; esac; prev=$a; done\n'


def _compiler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> None:
    cc = tmp_path / "fake-cc"
    cc.write_text(script)
    cc.chmod(cc.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("CC", str(cc))
    monkeypatch.setenv("GRADCOMP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(_compiled, "_LOADED", {})  # a kernel another test loaded must not count
    monkeypatch.setattr(_compiled, "_FAILED", {})


@pytest.mark.parametrize("script", [FAILING, GARBAGE], ids=["build-fails", "load-fails"])
def test_auto_falls_back_to_torch_with_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str
) -> None:
    _compiler(tmp_path, monkeypatch, script)
    assert _compiled.available()  # a compiler is "found": the old auto would have crashed
    with pytest.warns(CKernelUnavailableWarning, match="engine='torch'") as rec:
        auto = run(CFG, [1, 2], 4, progress=False, engine="auto")
    assert len([w for w in rec if issubclass(w.category, CKernelUnavailableWarning)]) == 1
    assert issubclass(CKernelUnavailableWarning, UserWarning)
    assert auto.attrs["engine"] == "torch"
    ref = run(CFG, [1, 2], 4, progress=False, engine="torch")
    for v in ref.data_vars:
        np.testing.assert_array_equal(auto[v].values, ref[v].values, err_msg=v)
    xr.testing.assert_identical(auto.drop_attrs(), ref.drop_attrs())


def test_explicit_c_still_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _compiler(tmp_path, monkeypatch, FAILING)
    with pytest.raises(RuntimeError, match=r"failed.*engine='torch'"):
        run(CFG, [1], 2, progress=False, engine="c")


def test_failed_build_is_not_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _compiler(tmp_path, monkeypatch, FAILING)
    calls = []
    real_load = _compiled.load
    monkeypatch.setattr(_compiled, "load", lambda dt: calls.append(dt) or real_load(dt))
    first = _compiled.try_load(CFG.torch_dtype)
    assert first is not None and "failed" in first
    assert _compiled.try_load(CFG.torch_dtype) == first
    assert len(calls) == 1
