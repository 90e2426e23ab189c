"""Callbacks that record per-task gradient statistics inside existing training loops.

- :class:`gradcomp.integrations.hf.GradcompCallback` -- a ``transformers.TrainerCallback``;
- :class:`gradcomp.integrations.lightning.GradcompLightningCallback` -- a Lightning ``Callback``.

Import the submodule you need: each imports only its own framework.
"""

__all__: list[str] = []
