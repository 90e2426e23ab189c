"""Mechanism analyzers: pure functions from a recording or ensemble Dataset to a Dataset.

- :func:`conflict` -- cosine, gradient-magnitude similarity, conflict frequency / count /
  energy, per-unit competition;
- :func:`oscillation` -- each task's loss oscillation (swing amplitude, reversals, Welch spectrum);
- :func:`sensing` -- how well a head's own trace decodes the other head's setting, over time;
- :func:`correlate` and :func:`lagged` -- relate traces to S across training and capacity;
- :func:`qvalues` -- false-discovery-rate q-values of a family of p-values;
- :func:`need` and :func:`finish` -- for writing an analyzer: check the input's variables, then
  label the result and keep the input's provenance (``docs/architecture.md``).

Each is also reachable as ``ds.gradcomp.<name>(...)`` (see :mod:`gradcomp.accessor`).
"""

from __future__ import annotations

from gradcomp.analyze._checks import finish, need
from gradcomp.analyze.conflict import conflict
from gradcomp.analyze.correlate import correlate
from gradcomp.analyze.lagged import lagged
from gradcomp.analyze.multiplicity import qvalues
from gradcomp.analyze.oscillation import oscillation
from gradcomp.analyze.sensing import sensing

__all__ = [
    "conflict",
    "correlate",
    "finish",
    "lagged",
    "need",
    "oscillation",
    "qvalues",
    "sensing",
]
