"""Obviously correct, slow implementations that the tests check every fast path against.

Each module here is written from the documented formulas only and imports nothing from the code
it checks (no models, initialisers, setting tables or helpers of ``gradcomp``; only the dimension
names of :mod:`gradcomp.dims`), so a shared mistake cannot hide in both; ``tests/
test_reference_independence.py`` enforces this. Use in float64. (The Cockpit / BackPACK habit: ship
the slow reference with the package, so anyone can check a result.)

- :mod:`gradcomp.reference.grads`: one ``torch.autograd.grad`` per task, Grams by loops over task
  pairs and units (checks ``gradcomp.record`` and its strategies).
- :mod:`gradcomp.reference.ensemble`: one run at a time through a functional problem (checks
  :func:`gradcomp.ensemble.train` and :func:`gradcomp.ensemble.train_loop`).
- :mod:`gradcomp.reference.ncnet`: NCnet built from its definition, one seed at a time (checks
  :func:`gradcomp.ncnet.run`'s engines).
- :mod:`gradcomp.reference.lora`: one LoRA ensemble member at a time (checks
  :func:`gradcomp.lora.ensemble.train_vmap` and ``train_loop``).

The per-task gradient functions are re-exported here.
"""

from __future__ import annotations

from gradcomp.reference.grads import (
    gram_reference,
    layer_grams,
    per_task_gradients,
    unit_gram_reference,
)

__all__ = ["gram_reference", "layer_grams", "per_task_gradients", "unit_gram_reference"]
