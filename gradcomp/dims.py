"""The one vocabulary of dimension names and variable labels, used everywhere in gradcomp.

Every Dataset gradcomp writes uses these dimension names, and every variable carries a
``long_name`` and ``units`` attribute so that xarray labels plots by itself. Modules that add
variables pass their own labels to :func:`annotate` next to the shared ones defined here.

Units are UDUNITS-2 strings (CF 1.10 §3.1): ``"1"`` for dimensionless quantities, counts and
indices, with the ``long_name`` saying what is counted or in which scale (losses, gradients and
their inner products are dimensionless, like the loss they derive from). :func:`annotate` also
adds the CF links (:func:`gradcomp._cf.link`): ``flag_values`` on ±1 outcomes and
``ancillary_variables`` from an estimate to its bounds.
"""

from __future__ import annotations

from collections.abc import Mapping

import xarray as xr

from gradcomp import _cf

STEP = "step"  # optimiser step at which a statistic was recorded
TASK = "task"  # task (or head) name
TASK_J = "task_j"  # second task axis of pairwise (T x T) matrices
LAYER = "layer"  # group of shared parameters; includes ALL, or attrs[ALL_IS] names its alias
UNIT = "unit"  # hidden neuron (output row of a shared Linear layer)
PARAM = "param"  # flattened shared parameters of a full-gradient recording (store="full")
SEED = "seed"  # independent training run
ALICE = "alice"  # Alice's setting, 1 or 2
BOB = "bob"  # Bob's setting, 1 or 2
WIDTH = "width"  # hidden width (NCnet capacity)
RANK = "rank"  # LoRA rank (transformer capacity)
COMPONENT = "component"  # rank component j of a LoRA adapter (row j of A, column j of B)
ADAPTERS = "adapters"  # LoRA adapters shared by the heads, or one per head (the control)
FREQUENCY = "frequency"  # spectral frequency of a trace, cycles per step
LAG = "lag"  # lag of a cross-correlation, in traced steps
OWN = "own"  # a head's own setting (sensing decodes the remote one)
ANALYSIS = "analysis"  # rows of a correlation table
MARGINAL = "marginal"  # the four marginal shifts of a CHSH estimate (gradcomp.chsh.SHIFT)
LR = "lr"  # learning rate of a sweep
FEATURE = "feature"  # the trace a sensing decoder reads (loss, oscillation amplitude, ...)
PROFILE = "profile"  # channel profile of a ConvAC design (gradcomp.graph.design_bounds)
BLOCK = "block"  # partition block size, in inputs, of a ConvAC design
LEVEL = "level"  # pooling level of a ConvAC

ALL = "all"  # the LAYER entry for every shared parameter as one vector
#: Dataset attribute naming the one LAYER entry that is also ALL (stored once, e.g. NCnet's
#: "hidden": its shared parameters are exactly one layer); see :func:`layer`
ALL_IS = "layer_all"
SETTINGS = (1, 2)  # the values of ALICE and BOB

# variables of a recording (gradcomp.record, gradcomp.ncnet.run, gradcomp.lora)
LOSS = "loss"  # each task's loss (STEP, TASK)
GRAM = "gram"  # inner products of per-task gradients (STEP, LAYER, TASK, TASK_J)
GRAD_NORM = "grad_norm"  # per-task gradient norm (STEP, LAYER, TASK)
COSINE = "cosine"  # cosine between per-task gradients (STEP, LAYER, TASK, TASK_J)
UNIT_GRAM = "unit_gram"  # per-unit inner products (STEP, LAYER, UNIT, TASK, TASK_J)
COMPONENT_GRAM = "component_gram"  # per LoRA rank component, all modules (COMPONENT, TASK, TASK_J)
GRAD = "grad"  # full per-task gradients (store="full")

# variables of an ensemble and of its CHSH estimate (gradcomp.chsh.estimate)
OUTCOME_A, OUTCOME_B = _cf.OUTCOMES  # Alice's and Bob's ±1 outcomes ("a", "b")
C = "C"  # correlator <ab> per (ALICE, BOB) setting pair
S = "S"  # CHSH statistic C11 + C12 + C21 - C22
DELTA = "delta"  # signaling measure
CBD_MARGIN = "cbd_margin"  # Contextuality-by-Default margin
#: suffixes of an estimate's standard error and interval bounds: ``S + LO`` is ``"S_lo"``
SE, LO, HI = _cf.COMPANIONS

#: (long_name, units) of the variables that several modules produce.
LABELS: dict[str, tuple[str, str]] = {
    LOSS: ("task loss", "1"),
    GRAM: ("inner product of per-task gradients (loss² per parameter²)", "1"),
    GRAD_NORM: ("per-task gradient norm (loss per parameter)", "1"),
    COSINE: ("cosine between per-task gradients", "1"),
    UNIT_GRAM: ("per-unit inner product of per-task gradients (loss² per parameter²)", "1"),
    GRAD: ("per-task gradient (loss per parameter)", "1"),
    STEP: ("training step (optimiser steps taken)", "1"),
    TASK: ("task", "1"),
    TASK_J: ("task (second axis)", "1"),
    LAYER: ("shared layer", "1"),
    SEED: ("seed", "1"),
    WIDTH: ("hidden width (number of hidden units)", "1"),
    RANK: ("LoRA rank", "1"),
    COMPONENT: ("LoRA rank component", "1"),
    ADAPTERS: ("LoRA adapters: shared by both heads, or separate (one per head)", "1"),
    COMPONENT_GRAM: ("inner product of per-task gradients of one LoRA rank component", "1"),
    ALICE: ("Alice's setting", "1"),
    BOB: ("Bob's setting", "1"),
    UNIT: ("hidden unit", "1"),
    FREQUENCY: ("frequency (cycles per training step)", "1"),
    LAG: ("lag (in traced steps)", "1"),
    OWN: ("own setting", "1"),
}


def bounded(
    name: str, long_name: str, units: str = "1", *, short: str | None = None
) -> dict[str, tuple[str, str]]:
    """Labels of an estimate and its interval bounds ``name + LO``, ``name + HI``.

    Args:
        name: the estimate's variable, e.g. ``"pearson"``.
        long_name: its ``long_name``.
        units: the units of the estimate and its bounds.
        short: how the bounds name the estimate (default ``long_name``): the bounds read
            ``"<short>, lower bound"`` and ``"<short>, upper bound"``.

    Returns:
        ``{name: (long_name, units), name + LO: ..., name + HI: ...}`` for a ``LABELS`` table.
    """
    what = short or long_name
    return {
        name: (long_name, units),
        name + LO: (f"{what}, lower bound", units),
        name + HI: (f"{what}, upper bound", units),
    }


def annotate(ds: xr.Dataset, labels: Mapping[str, tuple[str, str]] | None = None) -> xr.Dataset:
    """Set ``long_name`` and ``units`` on every variable and coordinate with a known label, and
    the CF links of :func:`gradcomp._cf.link` (outcome flags, estimates to their bounds).

    Args:
        ds: the Dataset to label (modified in place and returned).
        labels: extra ``name -> (long_name, units)`` pairs, taking precedence over :data:`LABELS`.

    Returns:
        ``ds``, for chaining.
    """
    table = {**LABELS, **(labels or {})}
    for name in list(ds.variables):
        if name in table:
            long_name, units = table[str(name)]
            ds[name].attrs.setdefault("long_name", long_name)
            ds[name].attrs.setdefault("units", units)
    return _cf.link(ds)


def require(ds: xr.Dataset, names: list[str] | tuple[str, ...], hint: str = "") -> None:
    """Raise a ``ValueError`` naming every variable of ``names`` that ``ds`` lacks.

    Args:
        ds: the Dataset an analysis was given.
        names: variables (or coordinates) it needs.
        hint: how to produce them, e.g. ``"record(..., units=True)"``.
    """
    missing = [n for n in names if n not in ds.variables]
    if missing:
        how = f" Produce them with {hint}." if hint else ""
        raise ValueError(f"the Dataset lacks {', '.join(map(repr, missing))}.{how}")


def layer(ds: xr.Dataset | xr.DataArray, name: str) -> str:
    """The ``layer`` label under which ``ds`` stores layer ``name``.

    ``name`` itself, except ``"all"`` in a Dataset that stores it under another label
    (``attrs["layer_all"]``, e.g. ``"hidden"`` for NCnet, whose shared parameters are one layer):
    ``ds.sel(layer=layer(ds, "all"))`` works on every gradcomp Dataset.
    """
    if name == ALL and LAYER in ds.coords and ALL not in ds[LAYER].values:
        alias = ds.attrs.get(ALL_IS)
        if alias is not None:
            return str(alias)
    return name
