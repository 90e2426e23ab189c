"""Record per-task gradient statistics inside existing training loops.

- :mod:`gradcomp.integrations.hf` -- ``GradcompCallback`` (a ``transformers.TrainerCallback``) and
  ``GradcompTrainerMixin`` (records on the Trainer's real step, no replay);
- :mod:`gradcomp.integrations.lightning` -- ``GradcompLightningCallback`` (a Lightning
  ``Callback``) and ``GradcompLightningMixin`` (records on the module's real step, no replay).

Import the submodule you need: each imports only its own framework.
"""

__all__: list[str] = []
