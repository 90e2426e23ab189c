"""Multiplicity: false-discovery-rate q-values of a family of p-values.

q-values adjust each p-value of a family so that rejecting every hypothesis with q < alpha
controls the false discovery rate at alpha: Benjamini & Hochberg (1995, JRSS B 57, 289) for
independent or positively dependent tests (``"bh"``), Benjamini & Yekutieli (2001, Ann. Stat.
29, 1165) under any dependence (``"by"``). The computation is
``scipy.stats.false_discovery_control``; NaN p-values (undefined tests) stay NaN and are not
counted in the family.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr
from scipy import stats

__all__ = ["qvalues"]

METHODS = ("bh", "by")


def _q_last(p: np.ndarray, method: str) -> np.ndarray:
    """q-values of each family along the last axis of ``p`` (NaN-aware)."""
    flat = p.reshape(-1, p.shape[-1])
    out = np.full(flat.shape, np.nan)
    for i, row in enumerate(flat):
        ok = np.isfinite(row)
        if ok.any():
            out[i, ok] = stats.false_discovery_control(row[ok], method=method)
    return out.reshape(p.shape)


def _check(values: np.ndarray) -> None:
    finite = values[np.isfinite(values)]
    if np.any((finite < 0) | (finite > 1)) or np.any(np.isinf(values)):
        raise ValueError("p-values must lie in [0, 1] (NaN for an undefined test)")


def qvalues(
    p: xr.DataArray | np.ndarray,
    *,
    dims: str | int | Sequence[str] | Sequence[int] | None = None,
    method: str = "bh",
) -> xr.DataArray | np.ndarray:
    """False-discovery-rate q-values, with the same shape (and coords) as ``p``.

    Args:
        p: p-values, a DataArray or an array; NaN marks an undefined test (it stays NaN and
            does not enlarge the family).
        dims: the dims (DataArray) or axes (array) over which one family is taken; every
            combination of the other dims is a separate family. ``None``: the whole array is
            one family.
        method: ``"bh"`` (Benjamini-Hochberg) or ``"by"`` (Benjamini-Yekutieli).

    Returns:
        q-values of the type of ``p``; a DataArray keeps its dims, coords and attrs, with
        ``long_name`` "q-value (...)" and ``attrs["fdr_method"]`` / ``attrs["fdr_family"]``.

    Raises:
        ValueError: an unknown method or dim, or a p-value outside [0, 1].
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(p, xr.DataArray):
        if isinstance(dims, int):
            raise ValueError("dims of a DataArray are names; integer axes are for arrays")
        family = list(p.dims) if dims is None else [dims] if isinstance(dims, str) else list(dims)
        unknown = [d for d in family if d not in p.dims]
        if unknown:
            raise ValueError(f"dims {unknown} are not dims of p {list(p.dims)}")
        _check(np.asarray(p.values, float))
        rest = [d for d in p.dims if d not in family]
        moved = p.transpose(*rest, *family)
        values = np.asarray(moved.values, float)
        shape = values.shape
        flat = values.reshape(*shape[: len(rest)], -1)
        q = _q_last(flat, method).reshape(shape)
        out = moved.copy(data=q).transpose(*p.dims)
        name = p.attrs.get("long_name", p.name or "p-value")
        out.attrs = {
            **p.attrs,
            "long_name": f"q-value ({name})",
            "units": "1",
            "fdr_method": method,
            "fdr_family": ",".join(map(str, family)),
        }
        return out
    arr = np.asarray(p, float)
    _check(arr)
    axes = (
        tuple(range(arr.ndim))
        if dims is None
        else (dims,)
        if isinstance(dims, int)
        else tuple(int(a) for a in dims)
    )
    axes = tuple(a % arr.ndim for a in axes)
    keep = [a for a in range(arr.ndim) if a not in axes]
    arr_moved = np.transpose(arr, (*keep, *axes))
    flat_q = _q_last(arr_moved.reshape(*arr_moved.shape[: len(keep)], -1), method)
    return np.transpose(flat_q.reshape(arr_moved.shape), np.argsort([*keep, *axes]))
