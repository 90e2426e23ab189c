"""Property tests (hypothesis): Gram PSD and symmetric, cosine symmetric in [-1, 1], results permute
with the task order, and every strategy matches the reference over random shapes."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import gradcomp
from gradcomp.reference import gram_reference, per_task_gradients

SETTINGS = settings(max_examples=12, deadline=None, derandomize=True)


def _record(
    seed: int, n_tasks: int, width: int, strategy: str, order: list[int] | None = None
) -> tuple[object, np.ndarray]:
    torch.manual_seed(seed)
    names = [f"t{i}" for i in range(n_tasks)]
    trunk = nn.Sequential(nn.Linear(3, width), nn.Tanh(), nn.Linear(width, width)).double()
    heads = nn.ModuleList([nn.Linear(width, 1) for _ in names]).double()
    model = nn.ModuleDict({"trunk": trunk, "heads": heads})
    x = torch.randn(2 * n_tasks, 3, dtype=torch.float64)
    order = order or list(range(n_tasks))
    with gradcomp.record(model, [names[i] for i in order], strategy=strategy) as rec:
        h = trunk(x)
        rows = {names[i]: slice(2 * i, 2 * i + 2) for i in range(n_tasks)}
        losses: dict[str, Tensor] = {
            names[i]: heads[i](h[rows[names[i]]]).pow(2).mean() for i in range(n_tasks)
        }
        ordered = [losses[names[i]] for i in order]
        ref = gram_reference(per_task_gradients(ordered, list(trunk.parameters())))
        rec.backward(losses, features=h, rows=rows)
    return rec.to_dataset(), ref


@SETTINGS
@given(
    seed=st.integers(0, 10_000),
    n_tasks=st.integers(2, 4),
    width=st.integers(1, 6),
    strategy=st.sampled_from(["loop", "batched", "features", "rows"]),
)
def test_gram_psd_symmetric_cosine_bounded_and_exact(
    seed: int, n_tasks: int, width: int, strategy: str
) -> None:
    ds, ref = _record(seed, n_tasks, width, strategy)
    gram = ds.gram.values  # type: ignore[attr-defined]
    cos = ds.cosine.values  # type: ignore[attr-defined]
    np.testing.assert_allclose(gram, np.swapaxes(gram, -1, -2), rtol=1e-12, atol=1e-15)
    for g in gram.reshape(-1, n_tasks, n_tasks):
        assert np.linalg.eigvalsh(g).min() >= -1e-10 * max(1.0, np.abs(g).max())
    finite = np.isfinite(cos)
    assert np.all(np.abs(cos[finite]) <= 1.0)
    np.testing.assert_array_equal(finite, np.swapaxes(finite, -1, -2))
    np.testing.assert_allclose(cos[finite], np.swapaxes(cos, -1, -2)[finite], rtol=1e-12)
    got = ds.gram.isel(step=0).sel(layer="all").values  # type: ignore[attr-defined]
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)


@SETTINGS
@given(
    seed=st.integers(0, 10_000),
    n_tasks=st.integers(2, 4),
    strategy=st.sampled_from(["loop", "batched", "features", "rows"]),
    data=st.data(),
)
def test_results_permute_with_task_order(
    seed: int, n_tasks: int, strategy: str, data: st.DataObject
) -> None:
    order = data.draw(st.permutations(list(range(n_tasks))))
    base, _ = _record(seed, n_tasks, 4, strategy)
    perm, _ = _record(seed, n_tasks, 4, strategy, order=list(order))
    names = [f"t{i}" for i in order]
    np.testing.assert_allclose(
        perm.gram.values,  # type: ignore[attr-defined]
        base.gram.sel(task=names, task_j=names).values,  # type: ignore[attr-defined]
        rtol=1e-10,
        atol=1e-14,
    )
    assert list(perm.task.values) == names  # type: ignore[attr-defined]


@SETTINGS
@given(
    seed=st.integers(0, 10_000),
    n_tasks=st.integers(2, 4),
    kind=st.sampled_from(["index", "mask", "list"]),
    data=st.data(),
)
def test_rows_with_any_row_assignment_equals_reference(
    seed: int, n_tasks: int, kind: str, data: st.DataObject
) -> None:
    """Uneven, interleaved row sets given as index tensors, bool masks or int lists."""
    n_rows = 9
    owner = data.draw(st.lists(st.integers(0, n_tasks), min_size=n_rows, max_size=n_rows))
    owner = [i % (n_tasks + 1) for i in owner]  # n_tasks = a row no task owns
    for t in range(n_tasks):  # every task owns at least one row
        owner[t] = t
    torch.manual_seed(seed)
    names = [f"t{i}" for i in range(n_tasks)]
    trunk = nn.Sequential(nn.Linear(3, 5), nn.LayerNorm(5), nn.Tanh(), nn.Linear(5, 4)).double()
    heads = nn.ModuleList([nn.Linear(4, 1) for _ in names]).double()
    model = nn.ModuleDict({"trunk": trunk, "heads": heads})
    x = torch.randn(n_rows, 3, dtype=torch.float64)
    own = torch.tensor(owner)
    rows: dict[str, object] = {}
    for i, t in enumerate(names):
        mask = own == i
        rows[t] = {
            "index": mask.nonzero().flatten(),
            "mask": mask,
            "list": mask.nonzero().flatten().tolist(),
        }[kind]
    with gradcomp.record(model, {t: 0.5 + i for i, t in enumerate(names)}, strategy="rows") as rec:
        h = trunk(x)
        losses = {t: heads[i](h[own == i]).pow(2).mean() for i, t in enumerate(names)}
        ref = gram_reference(per_task_gradients(list(losses.values()), list(trunk.parameters())))
        rec.backward(losses, rows=rows)  # type: ignore[arg-type]
    got = rec.to_dataset().gram.isel(step=0).sel(layer="all").values
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)
