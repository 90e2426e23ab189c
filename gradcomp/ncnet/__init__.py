"""NCnet: k binary inputs → one shared hidden layer → two heads (Alice "A", Bob "B").

Each head's *setting* picks which Boolean task it trains on; across seeds the ±1 training
outcomes give the CHSH statistic (Zhao, Wu, Hou 2026, arXiv 2603.04451). :func:`run` trains
every width × seed × setting pair at once and returns an ``xarray.Dataset``;
:func:`gradcomp.chsh.estimate` turns its outcomes into S with intervals. ``engine`` picks how
(:data:`ENGINES`); every engine consumes one :class:`NCnetPlan` (:func:`plan`), the data of all
runs computed once. :func:`capacity_run` is the capacity experiment (S across widths with the
unshared control) as ``gradcomp ncnet`` and ``analyses/ncnet_capacity.py`` run it.
:func:`save` writes a Dataset compactly (int8 outcomes, gzip, Gram upper triangles, no derived
variables, loss and Gram traces rounded to :data:`KEEP_BITS` mantissa bits unless
``keep_bits=None``) and :func:`open_dataset` reads it back.

Example:
    >>> from gradcomp import ncnet, chsh
    >>> ds = ncnet.run(ncnet.NCnetConfig(steps=50), widths=[2, 3], seeds=8, progress=False)
    >>> est = chsh.estimate(ds.a.isel(step=-1), ds.b.isel(step=-1), n_boot=100)
    >>> sorted(est.S.dims)
    ['width']
"""

from __future__ import annotations

from gradcomp.ncnet._compiled import CKernelUnavailableWarning, KernelLayoutError
from gradcomp.ncnet._config import DEFAULT_ALICE, DEFAULT_BOB, NCnetConfig
from gradcomp.ncnet._experiment import (
    CONTROL_PREFIX,
    CapacityResult,
    capacity,
    capacity_run,
    capacity_values,
    table,
)
from gradcomp.ncnet._expr import truth_table
from gradcomp.ncnet._io import KEEP_BITS, open_dataset, save
from gradcomp.ncnet._plan import NCnetPlan, plan
from gradcomp.ncnet._run import ENGINES, TASKS, resolve_engine, run

__all__ = [
    "CONTROL_PREFIX",
    "DEFAULT_ALICE",
    "DEFAULT_BOB",
    "ENGINES",
    "KEEP_BITS",
    "TASKS",
    "CKernelUnavailableWarning",
    "CapacityResult",
    "KernelLayoutError",
    "NCnetConfig",
    "NCnetPlan",
    "capacity",
    "capacity_run",
    "capacity_values",
    "open_dataset",
    "plan",
    "resolve_engine",
    "run",
    "save",
    "table",
    "truth_table",
]
