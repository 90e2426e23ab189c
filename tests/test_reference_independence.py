"""gradcomp.reference shares nothing with the code it checks: its imports, read with ``ast``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import gradcomp
from gradcomp import dims

REFERENCE = Path(gradcomp.__file__).parent / "reference"
FILES = sorted(REFERENCE.glob("*.py"))


def gradcomp_imports(tree: ast.AST) -> list[tuple[str, list[str], int]]:
    """``(module, imported names, line)`` of every import of a ``gradcomp`` module in ``tree``.

    Relative imports are resolved against ``gradcomp.reference`` (a module of the package).
    """
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [
                (a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "gradcomp"
            ]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = ["gradcomp", "reference"][: 3 - node.level]
                module = ".".join([*parts, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            if module.split(".")[0] == "gradcomp":
                out.append((module, [a.name for a in node.names], node.lineno))
    return out


def violations(source: str) -> list[str]:
    """What in ``source`` imports gradcomp code other than ``gradcomp.reference``.

    ``gradcomp.dims`` is allowed for its string constants (dimension and variable names) only.
    """
    bad = []
    for module, names, line in gradcomp_imports(ast.parse(source)):
        if module == "gradcomp.reference" or module.startswith("gradcomp.reference."):
            continue
        if module == "gradcomp.dims" and names:
            bad += [
                f"line {line}: gradcomp.dims.{n} is not a name constant"
                for n in names
                if not isinstance(getattr(dims, n, None), str)
            ]
            continue
        bad.append(f"line {line}: imports {module} {names or ''}".rstrip())
    return bad


def test_the_package_has_its_references() -> None:
    assert {f.stem for f in FILES} >= {"__init__", "grads", "ensemble", "ncnet", "lora"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_reference_modules_import_no_gradcomp_code(path: Path) -> None:
    assert violations(path.read_text()) == [], path.name


@pytest.mark.parametrize(
    "source",
    [
        "from gradcomp.ncnet._model import init_params",
        "from gradcomp.ensemble import generator",
        "import gradcomp.ncnet",
        "from gradcomp import ncnet",
        "from .. import chsh",
        "from ..ncnet import NCnetConfig",
        "from gradcomp.dims import annotate",
        "import gradcomp.dims",
        "def f():\n    from gradcomp.ncnet._fast import SETTING_PAIRS",
    ],
)
def test_the_check_catches_imports_of_checked_code(source: str) -> None:
    assert violations(source)


@pytest.mark.parametrize(
    "source",
    [
        "from gradcomp.reference.grads import gram_reference",
        "from .grads import gram_reference",
        "from gradcomp.dims import ALL, SEED",
        "import numpy as np\nimport torch",
    ],
)
def test_the_check_allows_the_package_and_dimension_names(source: str) -> None:
    assert violations(source) == []
