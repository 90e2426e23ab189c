"""Provenance: gradcomp's version from its package metadata, library versions, a CF history, and a
git state only for gradcomp's own checkout, never for a user's repository gradcomp sits in."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import gradcomp
from gradcomp import provenance as prov_mod
from gradcomp.provenance import provenance

PACKAGE = Path(gradcomp.__file__).resolve().parent
ROOT = PACKAGE.parent
GIT = shutil.which("git")
needs_git = pytest.mark.skipif(GIT is None, reason="git is not installed")


def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "u", "GIT_AUTHOR_EMAIL": "u@example.org",
           "GIT_COMMITTER_NAME": "u", "GIT_COMMITTER_EMAIL": "u@example.org"}  # fmt: skip
    out = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def _user_repo(tmp_path: Path, package_at: str, project: str) -> Path:
    """A git repository of a user's project ``project`` holding a copy of the gradcomp package
    at ``package_at``, committed; returns the copied package directory."""
    repo = tmp_path / "user"
    repo.mkdir()
    (repo / "pyproject.toml").write_text(f'[project]\nname = "{project}"\nversion = "1.0"\n')
    pkg = repo / package_at / "gradcomp"
    shutil.copytree(PACKAGE, pkg, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "user's work")
    return pkg


def test_versions_come_from_package_metadata() -> None:
    attrs = provenance({"lr": 0.5})
    assert attrs["gradcomp_version"] == importlib.metadata.version("gradcomp")
    assert gradcomp.__version__ == importlib.metadata.version("gradcomp")
    for lib in ("torch", "numpy", "xarray", "scipy"):
        assert attrs[f"{lib}_version"] == importlib.metadata.version(lib), lib
    assert all(type(v) is str for v in attrs.values())
    assert json.loads(attrs["config"]) == {"lr": 0.5}


def test_cf_global_attributes() -> None:
    attrs = provenance({})
    assert attrs["Conventions"] == "CF-1.10"
    # ISO 8601 UTC time, then the function that made the Dataset (this test)
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ: gradcomp \S+ "
        r"(tests\.)?test_provenance\.test_cf_global_attributes",
        attrs["history"],
    ), attrs["history"]
    assert provenance({}, source="gradcomp.x.y")["history"].endswith(": gradcomp " + (
        gradcomp.__version__) + " gradcomp.x.y")  # fmt: skip


def test_history_time_is_now_unless_source_date_epoch_fixes_it(monkeypatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "86400")
    assert provenance({})["history"].startswith("1970-01-02T00:00:00Z: gradcomp ")
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    before = time.strftime("%Y-%m-%dT%H:%M", time.gmtime())
    stamp = provenance({})["history"][:16]
    assert stamp >= before and stamp <= time.strftime("%Y-%m-%dT%H:%M", time.gmtime())


@needs_git
@pytest.mark.parametrize("package_at", ["venv/lib/python3/site-packages", "vendor", "."])
def test_no_git_state_from_a_users_repository(tmp_path, package_at) -> None:
    """gradcomp installed (or vendored) inside another project's repository: that repository's
    commit is not gradcomp's."""
    pkg = _user_repo(tmp_path, package_at, "userproject")
    user_commit = _git(pkg, "rev-parse", "--short", "HEAD")
    state = prov_mod._git_state(str(pkg))
    assert user_commit not in state
    assert state == ""


@needs_git
def test_no_git_state_from_a_users_repository_in_a_fresh_process(tmp_path) -> None:
    """The same through ``provenance()`` of the copied package, imported as a user would."""
    pkg = _user_repo(tmp_path, "venv/lib/python3/site-packages", "userproject")
    code = "from gradcomp.provenance import provenance; print(repr(provenance()['git_state']))"
    env = {**os.environ, "PYTHONPATH": str(pkg.parent), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "''"


@needs_git
def test_git_state_of_gradcomps_own_checkout(tmp_path) -> None:
    pkg = _user_repo(tmp_path, ".", "gradcomp")
    commit = _git(pkg, "rev-parse", "--short", "HEAD")
    assert prov_mod._git_state(str(pkg)).startswith(commit[:7])
    with open(pkg / "__init__.py", "a") as f:
        f.write("# an uncommitted change\n")
    prov_mod._git_state.cache_clear()  # looked up once per process and path
    assert prov_mod._git_state(str(pkg)).endswith("-dirty")


@needs_git
def test_a_gradcomp_checkout_nested_in_another_repository(tmp_path) -> None:
    """gradcomp's pyproject, but the git toplevel is a user's repository above it."""
    outer = tmp_path / "outer"
    outer.mkdir()
    inner = outer / "third_party" / "gradcomp-src"
    inner.mkdir(parents=True)
    (inner / "pyproject.toml").write_text('[project]\nname = "gradcomp"\n')
    shutil.copytree(PACKAGE, inner / "gradcomp", ignore=shutil.ignore_patterns("__pycache__"))
    _git(outer, "init", "-q")
    _git(outer, "add", "-A")
    _git(outer, "commit", "-q", "-m", "vendored")
    assert prov_mod._git_state(str(inner / "gradcomp")) == ""


def test_no_git_state_without_a_pyproject(tmp_path) -> None:
    pkg = tmp_path / "site-packages" / "gradcomp"
    pkg.mkdir(parents=True)
    assert prov_mod._git_state(str(pkg)) == ""
