"""Boundary checks shared by the analyzers: clear errors that say what to do."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import xarray as xr

from gradcomp import dims
from gradcomp.provenance import derive, describe, provenance

#: How to produce each variable an analyzer may need (the hint in the error message).
HINTS: dict[str, str] = {
    dims.LOSS: "gradcomp.record(...) (every recording has it) or gradcomp.ncnet.run(...)",
    dims.GRAM: "gradcomp.record(...) or gradcomp.ncnet.run(...) with traces recorded",
    dims.COSINE: "gradcomp.record(...) or gradcomp.ncnet.run(...) with traces recorded",
    dims.GRAD_NORM: "gradcomp.record(...) or gradcomp.ncnet.run(...) with traces recorded",
    dims.UNIT_GRAM: "gradcomp.record(..., units=True) or NCnetConfig(units=True)",
    dims.OUTCOME_A: "gradcomp.ncnet.run(...) (ensemble outcomes)",
    dims.OUTCOME_B: "gradcomp.ncnet.run(...) (ensemble outcomes)",
}


def need(ds: xr.Dataset, names: list[str] | tuple[str, ...]) -> None:
    """Raise a ``ValueError`` naming the missing variables and the option that produces them."""
    missing = [n for n in names if n not in ds.variables]
    if missing:
        hint = "; ".join(f"{n!r}: {HINTS.get(n, 'see docs/data-model.md')}" for n in missing)
        dims.require(ds, names, hint=hint)


def need_dims(da: xr.DataArray, dims: tuple[str, ...], name: str) -> None:
    """Raise a ``ValueError`` if ``da`` lacks one of ``dims``."""
    missing = [d for d in dims if d not in da.dims]
    if missing:
        raise ValueError(
            f"{name!r} has dims {tuple(da.dims)} but needs {missing}; see docs/data-model.md"
        )


def need_length(da: xr.DataArray, dim: str, minimum: int, what: str) -> None:
    """Raise a ``ValueError`` if ``da`` has fewer than ``minimum`` entries along ``dim``."""
    n = da.sizes.get(dim, 0)
    if n < minimum:
        raise ValueError(
            f"the trace is too short for {what}: {n} entries along {dim!r}, need at least "
            f"{minimum}. Record more often (a denser schedule / trace_every) or pass a smaller "
            "window."
        )


def need_seeds(da: xr.DataArray, minimum: int, what: str) -> None:
    """Raise a ``ValueError`` unless ``da`` is an ensemble with at least ``minimum`` seeds."""
    n = da.sizes.get(dims.SEED, 0)
    if n < minimum:
        raise ValueError(
            f"{what} needs an ensemble of at least {minimum} seeds, got {n} (a single run "
            "cannot show it): run gradcomp.ncnet.run(config, widths, seeds=range(N)) with more "
            "seeds."
        )


#: config keys that are also set as top-level attrs (plain strings): how to read the result
PLAIN = ("method", "detrend", "undefined_reason")
#: config keys that an analysis finds rather than is given
_OUTCOMES = ("method", "undefined_reason")


def analysis(name: str, config: Mapping[str, Any]) -> str:
    """The ``analysis`` attr: the analyzer and its parameters, e.g. ``"conflict(window=10)"``.

    The outcome entries of ``config`` (the design chosen, why a statistic is undefined) are
    not parameters and are left out.
    """
    return describe(name, {k: v for k, v in config.items() if k not in _OUTCOMES})


def finish(
    ds: xr.Dataset,
    labels: Mapping[str, tuple[str, str]],
    name: str,
    config: Mapping[str, Any],
    source: xr.Dataset | Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Label ``ds`` and set its provenance attrs (netCDF-safe), keeping those of the input.

    The labels of ``labels`` replace any ``long_name``/``units`` a variable inherited from its
    input (xarray keeps attrs through arithmetic: a cosine would read "inner product ...").

    The config is stored as JSON in ``attrs["config"]``; its ``method``, ``detrend`` and
    ``undefined_reason`` entries are also plain attrs (``undefined_reason`` only when some
    statistic is undefined); ``attrs["analysis"]`` names the analyzer and its parameters
    (:func:`analysis`). The input's attrs (``source``: the analysed Dataset or its attrs) are
    kept as :func:`gradcomp.provenance.derive` says: its history lines come first, its
    ``strategy``, ``shared_parameters``, ... stay, and its ``config`` and versions become
    ``source_config``, ``source_<library>_version`` where the analysis' differ.
    """
    for var in labels:  # the analyzer's own label, not one inherited through arithmetic
        if var in ds.variables:
            ds[var].attrs.pop("long_name", None)
            ds[var].attrs.pop("units", None)
    dims.annotate(ds, labels)
    own = provenance({"analyzer": name, **config}, source=f"gradcomp.analyze.{name}")
    own["analysis"] = analysis(name, config)
    own.update({k: str(config[k]) for k in PLAIN if k in config and config[k] != ""})
    inherited = source.attrs if isinstance(source, xr.Dataset) else source
    ds.attrs = derive(inherited or {}, own)
    return ds
