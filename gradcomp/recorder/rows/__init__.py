"""The ``"rows"`` strategy: tasks that own disjoint rows of the batch, one ordinary backward.

The user says which batch rows (leading dimension) belong to which task:
``Recorder.backward(losses, rows={"alice": slice(0, 16), "bob": slice(16, 32)})`` (slices, index
tensors, lists of ints or boolean masks). When every loss ``L_t`` depends only on its own rows and
the model never mixes rows (no batch norm), the output gradient ``G`` of a shared module in the one
backward of ``Σ_t w_t L_t`` restricted to task t's rows is ``w_t ∂L_t/∂out``. So, from activations
``X`` kept by the hooks, without any extra reverse pass, each registered module type computes the
per-task gradient blocks from its task's rows (:mod:`.modules`, one file per type):

- ``nn.Linear``: ``∂L_t/∂W = G_tᵀ X_t / w_t``, ``∂L_t/∂b = Σ_rows G_t / w_t``;
- ``nn.LayerNorm``: ``∂L_t/∂γ = Σ_rows G_t ⊙ X̂_t / w_t``, ``∂L_t/∂β = Σ_rows G_t / w_t``;
- ``nn.Embedding``: ``∂L_t/∂E`` = rows of ``G_t / w_t`` added at the token ids (only touched rows);
- ``nn.Conv1d``, ``nn.Conv2d``: the weight gradient of the task's sample slice.

Each module's per-task blocks are reduced to Gram entries as soon as its gradient arrives and then
dropped; small blocks wait until the end of the backward, where the Grams of all blocks of one
size take one batched product (:mod:`.grams`). Where a module has no instance ``forward`` of its
own, a fused ``autograd.Function`` forms its parameter gradients as the sum of those blocks (no
extra product); otherwise a forward hook captures input and output gradient and the ordinary
backward runs. Shared parameters of other modules (and modules called outside their ``forward``,
or whose input is not batch-sized) fall back to one vmapped VJP. A new module type is added with
:func:`register_rows_module` (:mod:`.registry`). The training gradient is that of the one backward
(up to summation order in the fused paths). Assumptions (the user's promise when passing
``rows=``): row independence, rows along dimension 0 of every hooked input (batch first), non-zero
loss weights, and shared parameters used only inside their module's forward (no tied weights used
elsewhere).

From the second recorded step on, the fused Linear and LayerNorm run as C++ autograd functions
that do the same arithmetic (:mod:`.native`; the Python functions remain where those do not apply).

Layout: :mod:`.spec` (``rows=`` validation), :mod:`.registry` (module types), :mod:`.blocks`
(step state), :mod:`.hooks` (:class:`RowsHooks`), :mod:`.grams` (the Gram products),
:mod:`.native` (the C++ functions), :mod:`.check` (``rows=`` against the graph), :mod:`.step`
(one recorded step).
"""

from gradcomp.recorder.rows import modules  # registers the built-in module types
from gradcomp.recorder.rows.blocks import Split, Step
from gradcomp.recorder.rows.check import verify_rows
from gradcomp.recorder.rows.hooks import RowsHooks
from gradcomp.recorder.rows.registry import (
    RowsModule,
    lookup,
    register_rows_module,
    registered,
    supported,
)
from gradcomp.recorder.rows.spec import (
    RowSpec,
    as_row_index,
    check_disjoint,
    check_rows,
    even_rows,
)
from gradcomp.recorder.rows.step import hookable, rows_stats

__all__ = [
    "RowSpec",
    "RowsHooks",
    "RowsModule",
    "Split",
    "Step",
    "as_row_index",
    "check_disjoint",
    "check_rows",
    "even_rows",
    "hookable",
    "lookup",
    "modules",
    "register_rows_module",
    "registered",
    "rows_stats",
    "supported",
    "verify_rows",
]
