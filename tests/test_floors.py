"""pyproject.toml's lower bounds agree with .ci/lowest.txt, what the floor CI step installs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.version import Version  # a dependency of matplotlib and xarray

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parent.parent
# torch's floor stays torch>=2.3, but the floor CI step installs the CPU build on disk
# (torch==2.13.0): every other torch is a multi-GB CUDA download. lowest.txt must not pin it.
NOT_PINNED = {"torch"}
_REQ = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(.*)$")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def _floors() -> dict[str, list[str]]:
    """Direct dependency -> the ``>=`` floors it is declared with (base and every extra)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    floors: dict[str, list[str]] = {}
    for req in reqs:
        match = _REQ.match(req.split(";")[0].strip())
        assert match, req
        name, spec = _norm(match[1]), match[2]
        if name == "gradcomp":  # the `all` extra's self-reference
            continue
        lower = re.findall(r">=\s*([^,\s]+)", spec)
        assert len(lower) == 1, f"{req!r}: every direct dependency needs exactly one >= floor"
        floors.setdefault(name, []).append(lower[0])
    return floors


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / ".ci" / "lowest.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and version.strip(), f"lowest.txt: {line!r} is not name==version"
        assert _norm(name) not in pins, f"lowest.txt pins {name} twice"
        pins[_norm(name.strip())] = version.strip()
    return pins


def test_every_floor_is_pinned_in_lowest_txt_and_nothing_else():
    floors, pins = _floors(), _pins()
    assert "torch" in floors and not NOT_PINNED & set(pins)
    expected = {name: vs for name, vs in floors.items() if name not in NOT_PINNED}
    assert set(pins) == set(expected), (
        f"only in pyproject: {sorted(set(expected) - set(pins))}; "
        f"only in lowest.txt: {sorted(set(pins) - set(expected))}"
    )
    for name, versions in expected.items():
        assert {Version(v) for v in versions} == {Version(pins[name])}, (
            f"{name}: pyproject says >= {versions}, lowest.txt == {pins[name]}"
        )
