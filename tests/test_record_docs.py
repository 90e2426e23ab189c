"""Every Python example in docs/record.md runs as written (in a temporary working directory)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import xarray as xr

DOC = Path(__file__).resolve().parents[1] / "docs" / "record.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


def test_record_doc_has_examples() -> None:
    assert len(BLOCKS) >= 1


@pytest.mark.parametrize("code", BLOCKS, ids=[f"example{i}" for i in range(len(BLOCKS))])
def test_record_doc_example_runs(
    code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__doc_record__"}
    exec(compile(code, str(DOC), "exec"), namespace)
    ds = namespace.get("ds")  # each example ends with the recording as a Dataset
    assert isinstance(ds, xr.Dataset) and ds.sizes["step"] > 0
    assert set(ds.data_vars) >= {"loss", "gram", "grad_norm", "cosine"}
    assert bool(ds.gram.notnull().all())
