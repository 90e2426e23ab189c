"""The compiled Gram kernel and the block buffer pool of the ``"rows"`` step: each equal to an
obviously-correct reference (float64 products, the per-task autograd loop), deterministic, and
replaced by torch where the kernel cannot be built."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from _scripts import load_script
from torch import nn

import gradcomp
from gradcomp.gram import gram
from gradcomp.recorder.rows import cgram
from gradcomp.recorder.rows import hooks as rows_hooks
from gradcomp.recorder.rows.pool import MIN_BYTES, BlockPool
from gradcomp.reference import gram_reference, per_task_gradients

needs_kernel = pytest.mark.skipif(cgram.kernel() is None, reason="the Gram kernel cannot be built")


def _naive(flat: torch.Tensor) -> np.ndarray:
    f = flat.double().numpy()
    return np.array([[float(np.dot(f[i], f[j])) for j in range(len(f))] for i in range(len(f))])


@needs_kernel
@pytest.mark.parametrize("t", [4, 5, 7, 8, 9, 13])
@pytest.mark.parametrize("p", [16384, 16389, 70001])
def test_kernel_gram_equals_float64_products(
    t: int, p: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every T (tiles cut at the edges) and P (a column tail), also for rows of a wider buffer;
    float32 out, within float32 rounding of the float64 Gram (the kernel sums in float64)."""
    calls = []
    real = cgram.kernel

    def spy() -> object:
        calls.append(1)
        return real()

    monkeypatch.setattr(cgram, "kernel", spy)
    gen = torch.Generator().manual_seed(t * 1000 + p)
    wide = torch.randn(t, p + 11, generator=gen)
    for flat in (wide[:, :p].contiguous(), wide[:, 3 : 3 + p]):
        got = cgram.block_gram(flat)
        assert got.dtype == torch.float32 and got.shape == (t, t)
        want = _naive(flat)
        np.testing.assert_allclose(got.numpy(), want, rtol=2e-6, atol=2e-6 * np.abs(want).max())
        np.testing.assert_array_equal(got.numpy(), got.numpy().T)
    assert len(calls) == 2  # the kernel, not the fallback, was asked each time


@needs_kernel
def test_kernel_gram_does_not_depend_on_the_thread_count() -> None:
    flat = torch.randn(8, 300_000, generator=torch.Generator().manual_seed(3))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = cgram.block_gram(flat)
        torch.set_num_threads(2)
        two = cgram.block_gram(flat)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


@pytest.mark.parametrize(
    "flat",
    [
        torch.randn(8, 100),  # small: gram()
        torch.randn(2, 20_000),  # few tasks: gram()
        torch.randn(8, 4095),  # T² P below MIN_WORK: gram()
        torch.randn(4, 20_000, dtype=torch.float64),  # float64: gram()
        torch.randn(4, 40_000)[:, ::2],  # strided columns: gram()
    ],
    ids=["small", "few-tasks", "little-work", "float64", "strided"],
)
def test_blocks_outside_the_kernel_take_gram(flat: torch.Tensor) -> None:
    got = cgram.block_gram(flat)
    assert got.dtype == gram(flat).dtype
    torch.testing.assert_close(got, gram(flat), rtol=0, atol=0)


def test_without_a_compiler_block_gram_is_gram_and_the_build_is_not_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cc = tmp_path / "fake-cc"
    cc.write_text("#!/bin/sh\necho 'cc: error: no' >&2\nexit 1\n")
    cc.chmod(cc.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("CC", str(cc))
    monkeypatch.setenv("GRADCOMP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cgram, "_LIB", [])  # a kernel another test loaded must not count
    builds = []
    real_build = cgram.build
    monkeypatch.setattr(cgram, "build", lambda *a: builds.append(a) or real_build(*a))
    flat = torch.randn(8, 20_000)
    for _ in range(3):
        torch.testing.assert_close(cgram.block_gram(flat), gram(flat), rtol=0, atol=0)
    assert cgram.kernel() is None
    assert len(builds) == 1


def test_gradcomp_gram_torch_turns_the_kernel_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADCOMP_GRAM", "torch")
    assert cgram.kernel() is None
    flat = torch.randn(8, 20_000)
    torch.testing.assert_close(cgram.block_gram(flat), gram(flat), rtol=0, atol=0)


def test_pool_takes_back_only_what_it_lent() -> None:
    pool = BlockPool()
    cpu = torch.device("cpu")
    shape = (4, 128, 128)  # 256 KiB in float32: pooled
    a = pool.empty(shape, torch.float32, cpu)
    pool.give(a.transpose(1, 2))  # a view: its buffer goes back
    assert pool.empty(shape, torch.float32, cpu) is a
    foreign = torch.empty(shape)
    pool.give(foreign)  # never lent: ignored
    assert pool.empty(shape, torch.float32, cpu) is not foreign
    b = pool.empty(shape, torch.float64, cpu)
    assert b.dtype == torch.float64 and b is not a
    pool.give(a)
    pool.clear()
    assert pool.empty(shape, torch.float32, cpu) is not a


def test_pool_leaves_small_buffers_to_torch() -> None:
    pool = BlockPool()
    cpu = torch.device("cpu")
    small = (3, 4, 5)
    a = pool.empty(small, torch.float32, cpu)
    pool.give(a)
    assert pool.empty(small, torch.float32, cpu) is not a
    big = (1, MIN_BYTES // 4)
    c = pool.empty(big, torch.float32, cpu)
    pool.give(c)
    assert pool.empty(big, torch.float32, cpu) is c


def test_float32_recording_with_kernel_and_reused_buffers_equals_loop_over_steps() -> None:
    """T = 4 tasks, float32, wide Linears (large blocks: the pool's buffers and, where the
    compiler is present, the kernel) and one Linear called twice per forward (its first call's
    blocks must not be overwritten by the second's): three steps, each step's Grams equal the
    per-task autograd loop's (float64 products of float32 gradients)."""
    tasks = ["a", "b", "c", "d"]
    torch.manual_seed(0)
    d = 128
    lin1, lin2, again = nn.Linear(d, 2 * d), nn.Linear(2 * d, d), nn.Linear(d, d)
    trunk = nn.ModuleDict({"lin1": lin1, "lin2": lin2, "again": again})
    heads = nn.ModuleDict({t: nn.Linear(d, 1) for t in tasks})
    m = nn.ModuleDict({"trunk": trunk, "heads": heads})
    rows = {t: slice(6 * i, 6 * i + 6) for i, t in enumerate(tasks)}
    params = list(trunk.parameters())
    names = [n for n, _ in trunk.named_parameters()]
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    with gradcomp.record(m, tasks, strategy="rows", shared=trunk) as rec:
        wants = []
        for step in range(3):
            x = torch.randn(24, 5, d)
            h = again(torch.tanh(again(lin2(torch.tanh(lin1(x))))))
            losses = {t: heads[t](h[r]).pow(2).mean() for t, r in rows.items()}
            grads = per_task_gradients(list(losses.values()), params)
            wants.append(grads)
            opt.zero_grad()
            rec.backward(losses, step=step, rows=rows)
            opt.step()
        ds = rec.to_dataset()
    for step, grads in enumerate(wants):
        got = ds.gram.isel(step=step)
        for layer in ("lin1", "lin2", "again"):
            idx = [i for i, n in enumerate(names) if n.startswith(layer + ".")]
            want = gram_reference(grads, idx)
            np.testing.assert_allclose(
                got.sel(layer=f"trunk.{layer}"), want, rtol=1e-4, atol=1e-5 * np.abs(want).max()
            )


def test_the_hooks_reuse_block_buffers_from_step_to_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """After the first step, a wide Linear's blocks land in the buffer of the step before."""
    seen: list[tuple[tuple[int, ...], bool]] = []  # (shape, reused)

    class Counting(BlockPool):
        def empty(
            self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
        ) -> torch.Tensor:
            free = {id(b) for bs in self._free.values() for b in bs}
            out = super().empty(shape, dtype, device)
            seen.append((shape, id(out) in free))
            return out

    monkeypatch.setattr(rows_hooks, "BlockPool", Counting)
    monkeypatch.setenv("GRADCOMP_ROWS_NATIVE", "0")  # the Python functions' pool
    lin = nn.Linear(256, 256)  # blocks [2, 256, 256]: 512 KiB, pooled
    heads = nn.ModuleDict({t: nn.Linear(256, 1) for t in "ab"})
    m = nn.ModuleDict({"lin": lin, "heads": heads})
    rows = {"a": slice(0, 4), "b": slice(4, 8)}
    with gradcomp.record(m, ["a", "b"], strategy="rows", shared=lin) as rec:
        for step in range(3):
            h = lin(torch.randn(8, 256))
            rec.backward({t: heads[t](h[r]).sum() for t, r in rows.items()}, step=step, rows=rows)
    assert seen == [((2, 256, 256), False), ((2, 256, 256), True), ((2, 256, 256), True)]


@needs_kernel
def test_the_gram_benchmark_runs_and_checks_both_products(
    capsys: pytest.CaptureFixture[str],
) -> None:
    bench = load_script("benchmarks/rows_gram.py")
    assert bench.main(["--tasks", "4", "--reps", "5", "--no-save"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n  4 ") == len(bench.SIZES) and "below MIN_WORK" in out
