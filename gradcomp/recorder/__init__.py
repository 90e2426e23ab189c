"""Per-task gradient recorder: ``gradcomp.record(model, tasks)`` (see ``docs/record.md``).

:mod:`.config` holds the recorder's options as one frozen :class:`RecordConfig`;
:mod:`.strategy` the :class:`~gradcomp.recorder.strategy.Strategy` protocol, its registry
(:func:`register_strategy`) and ``"auto"``'s cost model; :mod:`.builtin` registers the four
built-ins, one module each (:mod:`.loop`, :mod:`.batched`, :mod:`.features`, :mod:`.rows`);
:mod:`.choice` picks and runs each recorded step's strategy and drives its hooks;
:mod:`.rows.check` verifies ``rows=`` on the first ``"rows"`` step; :mod:`.shared` finds and
groups the shared parameters, :mod:`.stats` reduces per-task gradients to Gram statistics,
:mod:`.dataset` builds the Dataset and :mod:`.io` writes (appends) it; :mod:`.compiled` handles
``torch.compile``.
"""

from gradcomp.recorder.compiled import CompiledSharingWarning
from gradcomp.recorder.config import RecordConfig
from gradcomp.recorder.core import (
    NonfiniteGradientWarning,
    NonfiniteLossWarning,
    Recorder,
    record,
)
from gradcomp.recorder.strategy import register_strategy, strategies

__all__ = [
    "CompiledSharingWarning",
    "NonfiniteGradientWarning",
    "NonfiniteLossWarning",
    "RecordConfig",
    "Recorder",
    "record",
    "register_strategy",
    "strategies",
]
