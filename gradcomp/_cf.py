"""CF links between the variables of a gradcomp Dataset (CF 1.10 §3.4 and §3.5).

* ±1 outcome variables (``a``, ``b`` and the control's ``unshared_a``, ``unshared_b``) get
  ``flag_values = [-1, 1]`` (in the variable's own dtype) and ``flag_meanings``: ``-1`` is a head
  that did not reach its outcome rule (NCnet: training accuracy below the threshold, by default
  not every training pattern solved; LoRA: accuracy below ``threshold``), ``+1`` one that did;
  NaN marks a diverged run.
* An estimate with interval bounds or a standard error (``S`` with ``S_se``, ``S_lo``,
  ``S_hi``; ``delta`` with ``delta_lo``/``delta_hi``; ``C``, ``cbd_margin``, ``r``, ...) gets
  ``ancillary_variables`` naming those of its companions that the Dataset holds.

The global attributes (``Conventions``, ``history``, versions) come from
:func:`gradcomp.provenance.provenance`; :func:`gradcomp.dims.annotate` calls :func:`link`, so
every Dataset builder gets both without code of its own.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

__all__ = ["COMPANIONS", "OUTCOMES", "OUTCOME_MEANINGS", "OUTCOME_PREFIXES", "link"]

#: names of the ±1 outcome variables
OUTCOMES = ("a", "b")

#: prefixes of outcome copies (the unshared control of :func:`gradcomp.ncnet.capacity`)
OUTCOME_PREFIXES = ("", "unshared_")

#: ``flag_meanings`` of ``flag_values = [-1, 1]``
OUTCOME_MEANINGS = "task_failed task_solved"

#: suffixes of the variables that qualify an estimate: standard error and interval bounds
COMPANIONS = ("_se", "_lo", "_hi")


def _is_outcome(name: str, da: xr.DataArray) -> bool:
    if not (np.issubdtype(da.dtype, np.integer) or np.issubdtype(da.dtype, np.floating)):
        return False
    return name in {p + o for p in OUTCOME_PREFIXES for o in OUTCOMES}


def link(ds: xr.Dataset) -> xr.Dataset:
    """Set ``flag_values``/``flag_meanings`` on outcomes and ``ancillary_variables`` on estimates.

    Args:
        ds: the Dataset (modified in place and returned); its values are not read, so a
            dask-backed Dataset stays lazy.

    Returns:
        ``ds``, for chaining.
    """
    names = {str(n) for n in ds.data_vars}
    for name in sorted(names):
        da = ds[name]
        if _is_outcome(name, da):
            da.attrs["flag_values"] = np.array([-1, 1], dtype=da.dtype)
            da.attrs["flag_meanings"] = OUTCOME_MEANINGS
        companions = [name + s for s in COMPANIONS if name + s in names]
        if companions:
            da.attrs["ancillary_variables"] = " ".join(companions)
        elif not set(str(da.attrs.get("ancillary_variables", "")).split()) <= names:
            del da.attrs["ancillary_variables"]  # inherited through arithmetic: names are gone
    return ds
