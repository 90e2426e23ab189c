"""Boolean task expressions over inputs ``x1 .. xk``, parsed safely (no ``eval``).

Grammar (Python operator syntax, parsed with :mod:`ast` and walked by hand): names ``x1`` ..
``xk``, constants ``0``/``1``/``True``/``False``, ``~e`` and ``not e`` (negation), ``a & b``,
``a | b``, ``a ^ b`` (and, or, xor), ``a and b``, ``a or b``, and parentheses. Anything else
(calls, attributes, other names, comparisons) is rejected with a ``ValueError``.
"""

from __future__ import annotations

import ast
import itertools
import re

import numpy as np

__all__ = ["evaluate", "input_patterns", "truth_table"]

_NAME = re.compile(r"^x([1-9][0-9]*)$")
_BINOPS = {
    ast.BitAnd: np.logical_and,
    ast.BitOr: np.logical_or,
    ast.BitXor: np.logical_xor,
}


def input_patterns(k: int) -> np.ndarray:
    """All ``2**k`` input patterns as booleans, shape ``(2**k, k)``, in binary counting order.

    Pattern ``p`` has ``x_i`` true when bit ``k - i`` of ``p`` is set (``x1`` is the most
    significant bit), so pattern 0 is all false and the last pattern all true.
    """
    if k < 1:
        raise ValueError(f"need at least one input, got inputs={k}")
    return np.array(list(itertools.product([False, True], repeat=k)), dtype=bool)


def _walk(node: ast.AST, x: np.ndarray, expr: str) -> np.ndarray:
    k = x.shape[1]
    if isinstance(node, ast.Expression):
        return _walk(node.body, x, expr)
    if isinstance(node, ast.Name):
        m = _NAME.match(node.id)
        if m is None:
            raise ValueError(f"unknown name {node.id!r} in task {expr!r}: use x1 .. x{k}")
        i = int(m.group(1))
        if i > k:
            raise ValueError(f"task {expr!r} uses x{i} but there are only {k} inputs")
        return x[:, i - 1].copy()
    if isinstance(node, ast.Constant) and node.value in (0, 1) and not isinstance(node.value, str):
        return np.full(x.shape[0], bool(node.value))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Invert, ast.Not)):
        return ~_walk(node.operand, x, expr)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return _BINOPS[type(node.op)](_walk(node.left, x, expr), _walk(node.right, x, expr))
    if isinstance(node, ast.BoolOp):
        op = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
        values = [_walk(v, x, expr) for v in node.values]
        out = values[0]
        for v in values[1:]:
            out = op(out, v)
        return out
    raise ValueError(
        f"unsupported syntax {type(node).__name__!r} in task {expr!r}: "
        "use x1..xk, 0, 1, ~, &, |, ^, not, and, or and parentheses"
    )


def evaluate(expr: str, x: np.ndarray) -> np.ndarray:
    """Evaluate a Boolean expression on boolean input rows ``x`` of shape ``(P, k)``."""
    if not isinstance(expr, str) or not expr.strip():
        raise ValueError(f"a task must be a non-empty expression string, got {expr!r}")
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as err:
        raise ValueError(f"cannot parse task {expr!r}: {err.msg}") from None
    return np.asarray(_walk(tree, np.asarray(x, dtype=bool), expr), dtype=bool)


def truth_table(expr: str, k: int) -> np.ndarray:
    """The task's target on every input pattern of :func:`input_patterns`, shape ``(2**k,)``.

    Example:
        >>> truth_table("x1 ^ x2", 2).astype(int).tolist()
        [0, 1, 1, 0]
    """
    return evaluate(expr, input_patterns(k))
