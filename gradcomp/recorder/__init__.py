"""Per-task gradient recorder: ``gradcomp.record(model, tasks)`` (see ``docs/record.md``).

Strategies live one per module (:mod:`.loop`, :mod:`.batched`, :mod:`.features`, :mod:`.rows`);
:mod:`.choice` picks and runs each recorded step's strategy (``"auto"``) and owns the rows hooks;
:mod:`.rows.check` verifies ``rows=`` on the first ``"rows"`` step; :mod:`.shared` finds and
groups the shared parameters, :mod:`.stats` reduces per-task gradients to Gram statistics,
:mod:`.dataset` builds the Dataset and :mod:`.io` writes (appends) it; :mod:`.compiled` handles
``torch.compile``.
"""

from gradcomp.recorder.compiled import CompiledSharingWarning
from gradcomp.recorder.core import (
    NonfiniteGradientWarning,
    NonfiniteLossWarning,
    Recorder,
    record,
)

__all__ = [
    "CompiledSharingWarning",
    "NonfiniteGradientWarning",
    "NonfiniteLossWarning",
    "Recorder",
    "record",
]
