"""NCnet: task parser, config, every engine == the per-seed reference, Dataset, CLI."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from _scripts import load_script

from gradcomp import chsh
from gradcomp.ncnet import NCnetConfig, plan, run, truth_table
from gradcomp.ncnet._compiled import available
from gradcomp.ncnet._experiment import capacity, table
from gradcomp.ncnet._fast import _EXP, LOG2E, _act, _tree_sum, exp_fixed, train_fast
from gradcomp.ncnet._run import train
from gradcomp.reference.ncnet import train_ncnet

needs_cc = pytest.mark.skipif(not available(), reason="no C compiler for engine='c'")


# --- tasks -----------------------------------------------------------------------------------


def test_truth_tables() -> None:
    assert truth_table("x1 ^ x2", 2).tolist() == [False, True, True, False]
    assert truth_table("~x2", 2).tolist() == [True, False, True, False]
    assert truth_table("x1 & x3", 3).astype(int).tolist() == [0, 0, 0, 0, 0, 1, 0, 1]
    assert truth_table("(not (x1 or 0)) | 1", 2).all()
    assert not truth_table("not (x1 or 0) | 1", 2).any()  # Python precedence: not binds last
    assert truth_table("(x1 and x2) ^ x3", 3).astype(int).tolist() == [0, 1, 0, 1, 0, 1, 1, 0]


@pytest.mark.parametrize(
    ("expr", "match"),
    [
        ("__import__('os').system('true')", "unsupported syntax 'Call'"),
        ("x1.real", "unsupported syntax 'Attribute'"),
        ("x4", "only 3 inputs"),
        ("y1", "unknown name"),
        ("x1 +", "cannot parse"),
        ("x1 == x2", "unsupported syntax 'Compare'"),
        ("2", "unsupported syntax 'Constant'"),
        ("", "non-empty"),
    ],
)
def test_bad_tasks_are_rejected_without_evaluating(expr: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        truth_table(expr, 3)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="two tasks"):
        NCnetConfig(alice=("x1",))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="activation"):
        NCnetConfig(activation="gelu")
    with pytest.raises(ValueError, match="no training pattern"):
        NCnetConfig(inputs=1, alice=("x1", "~x1"), bob=("x1", "x1"), holdout=(0, 1))
    with pytest.raises(ValueError, match="outside"):
        NCnetConfig(steps=10, trace_every=(3, 11))
    with pytest.raises(ValueError, match="x4"):
        NCnetConfig(bob=("x1", "x4"))
    cfg = NCnetConfig(steps=100, trace_every=25)
    assert cfg.trace_steps() == [0, 25, 50, 75, 100]
    assert NCnetConfig(steps=10, trace_every=(3,)).trace_steps() == [3, 10]
    from gradcomp.schedule import linear

    sched = NCnetConfig(steps=10, trace_every=linear(4, offset=1))
    assert sched.trace_steps() == [1, 5, 9, 10]
    assert sched.to_dict()["trace_every"].startswith("linear")
    default = NCnetConfig().trace_steps()
    assert default[0] == 0 and default[-1] == 2000 and 20 <= len(default) <= 40


# --- every engine against the independent reference -----------------------------------------

CASES = [
    dict(activation="tanh", holdout=(2,), units=True),
    dict(activation="relu", unshared=True),
    dict(activation="sigmoid", inputs=2, alice=("x1", "x1 ^ x2"), bob=("~x2", "x1 | x2")),
]


def _assert_equal_seed_by_seed(got: dict, ref: dict) -> None:
    """Equal in float64, every array (trace, width, setting, seed, ...) seed by seed."""
    assert set(got) == set(ref)
    for k in ref:
        assert got[k].shape == ref[k].shape and got[k].dtype == ref[k].dtype, k
        for s in range(ref[k].shape[3]):
            np.testing.assert_allclose(
                got[k][:, :, :, s], ref[k][:, :, :, s], rtol=1e-10, atol=1e-12, err_msg=f"{k} {s}"
            )


@pytest.mark.parametrize("case", CASES)
def test_fast_path_equals_per_seed_loop(case: dict) -> None:
    cfg = NCnetConfig(steps=30, dtype="float64", trace_every=10, lr=0.5, **case)
    ref = train_ncnet(cfg, [1, 3], [0, 5, 9])
    _assert_equal_seed_by_seed(train_fast(plan(cfg, [1, 3], [0, 5, 9])), ref)
    _assert_equal_seed_by_seed(train(plan(cfg, [1, 3], [0, 5, 9]), "loop"), ref)


@needs_cc
@pytest.mark.parametrize("case", CASES)
def test_compiled_kernel_equals_per_seed_loop(case: dict) -> None:
    cfg = NCnetConfig(steps=30, dtype="float64", trace_every=10, lr=0.5, **case)
    fast = train_fast(plan(cfg, [1, 3], [0, 5, 9]), engine="c")
    _assert_equal_seed_by_seed(fast, train_ncnet(cfg, [1, 3], [0, 5, 9]))


def test_fast_path_equals_vmap_trainer() -> None:
    cfg = NCnetConfig(
        steps=60, dtype="float64", trace_every=20, unshared=True, units=True, holdout=1
    )
    fast = train_fast(plan(cfg, [2, 4], list(range(6))))
    ref = train(plan(cfg, [2, 4], list(range(6))), "vmap")
    for k in fast:
        np.testing.assert_allclose(fast[k], ref[k], rtol=1e-10, atol=1e-12, err_msg=k)
    _assert_equal_seed_by_seed(ref, train_ncnet(cfg, [2, 4], list(range(6))))


def test_group_sums_agree() -> None:
    from gradcomp.ncnet._fast import _group_sum

    x = torch.randn(6, 3, 4, dtype=torch.float64)
    gidx = torch.tensor([0, 1, 1, 2, 2, 2])
    ref = torch.stack([x[0], x[1:3].sum(0), x[3:].sum(0)])
    torch.testing.assert_close(_group_sum(x, gidx, None, 3, slices=False), ref)
    torch.testing.assert_close(_group_sum(x, gidx, None, 3, slices=True), ref)
    torch.testing.assert_close(_group_sum(x, gidx, [0, 1, 3, 6], 3, slices=True), ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fixed_exp_and_activations_are_accurate(dtype: torch.dtype) -> None:
    lim = 87.0 if dtype == torch.float32 else 708.0
    x = torch.cat([torch.linspace(-lim, lim, 200001, dtype=dtype), torch.randn(10000, dtype=dtype)])
    e, ref = exp_fixed(x).double(), torch.exp(x.double())
    eps = torch.finfo(dtype).eps
    assert ((e - ref) / ref).abs().max() <= 2 * eps  # a few ulp (float32: cephes expf's ≤ 1 ulp)
    edges = torch.tensor([-1e4, -lim - 1, lim + 1, 1e4, -torch.inf, torch.inf], dtype=dtype)
    clamped = torch.tensor([-lim, -lim, lim, lim, -lim, lim], dtype=dtype)
    assert torch.equal(exp_fixed(edges), exp_fixed(clamped))
    assert (
        torch.isfinite(exp_fixed(edges)).all()
        and (exp_fixed(edges) >= torch.finfo(dtype).tiny).all()
    )
    assert exp_fixed(torch.tensor([torch.nan], dtype=dtype)).isnan().all()
    assert exp_fixed(torch.zeros(3, dtype=dtype)).eq(1).all()
    z = torch.linspace(-12, 12, 10001, dtype=dtype)
    torch.testing.assert_close(_act(z, "tanh"), torch.tanh(z), rtol=0, atol=4 * eps)
    torch.testing.assert_close(_act(z, "sigmoid"), torch.sigmoid(z), rtol=0, atol=2 * eps)
    torch.testing.assert_close(_act(z, "relu"), torch.relu(z), rtol=0, atol=0)


def _exp_scalar(x: float, dt: type) -> float:
    """exp_fixed written out with numpy scalars of type ``dt``: each operation rounded in dt."""
    c = _EXP[torch.float32 if dt is np.float32 else torch.float64]
    x = min(max(dt(x), dt(c.lo)), dt(c.hi))
    t = x * dt(LOG2E) + dt(c.magic)
    n = t - dt(c.magic)
    r = (x - n * dt(c.c1)) - n * dt(c.c2)
    p = dt(c.poly[0])
    for coef in c.poly[1:]:
        p = p * r + dt(coef)
    y = ((p * (r * r)) + r) + dt(1)
    return float(y * dt(2.0) ** int(n))  # 2^n exact: n within the normal range


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_fixed_exp_equals_its_scalar_definition_bit_for_bit(dt: type) -> None:
    rng = np.random.default_rng(0)
    xs = np.concatenate([rng.uniform(-90, 90, 3000), rng.normal(size=1000), [0.0, -87.0, 709.0]])
    xs = xs.astype(dt)
    got = exp_fixed(torch.from_numpy(xs)).numpy()
    want = np.array([_exp_scalar(x, dt) for x in xs], dtype=dt)
    np.testing.assert_array_equal(got, want)


def test_tree_sum_order() -> None:
    # odd lengths carry their middle entry; the order is fixed, so compare exact bits
    for m in (1, 2, 3, 5, 8, 13):
        x = torch.randn(4, m, 3, dtype=torch.float32)
        a = list(x.unbind(1))
        while len(a) > 1:
            h = len(a) // 2
            a = [a[p] + a[p + len(a) - h] for p in range(h)] + a[h : len(a) - h]
        assert torch.equal(_tree_sum(x, 1), a[0])
        torch.testing.assert_close(_tree_sum(x.double(), 1), x.double().sum(1))


@pytest.mark.parametrize("backend", ["torch", pytest.param("c", marks=needs_cc)])
def test_seed_results_do_not_depend_on_chunks_or_companions(backend: str) -> None:
    cfg = NCnetConfig(steps=150, units=True)
    big = run(cfg, [1, 2, 3], 40, chunk=15, progress=False, engine=backend)
    small = run(cfg, [3], [7, 33], progress=False, engine=backend)
    assert big.attrs["engine"] == backend
    for v in ("a", "b", "loss", "acc", "gram", "unit_gram"):
        np.testing.assert_array_equal(
            small[v].values, big[v].sel(width=[3], seed=[7, 33]).values, err_msg=v
        )


# --- the Dataset -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_run() -> xr.Dataset:
    return run(NCnetConfig(steps=80, units=True, holdout=1), [1, 2, 3], 12, progress=False)


def test_dataset_layout(small_run: xr.Dataset, tmp_path: Path) -> None:
    ds = small_run
    assert ds.a.dims == ("width", "seed", "alice", "bob", "step")
    assert ds.a.dtype == np.float32 and set(np.unique(ds.a.values)) <= {-1, 1}
    assert ds.diverged.dims == ds.a.dims and ds.diverged.dtype == bool
    assert not ds.diverged.any()
    assert ds.gram.dims == ("width", "seed", "alice", "bob", "step", "layer", "task", "task_j")
    assert ds.layer.values.tolist() == ["hidden"]  # also layer "all": stored once
    assert ds.attrs["layer_all"] == "hidden"
    assert ds.task.values.tolist() == ["A", "B"]
    assert ds.unit_gram.sizes["unit"] == 3
    assert np.isnan(ds.unit_gram.sel(width=1, unit=2)).all()
    assert int(ds.step[-1]) == 80
    # outcome rule: +1 exactly when every training pattern is right
    np.testing.assert_array_equal(ds.a == 1, ds.acc.sel(task="A") == 1)
    np.testing.assert_allclose(
        ds.grad_norm.sel(task="B"), np.sqrt(ds.gram.sel(task="B", task_j="B")), rtol=1e-6
    )
    cos = ds.cosine.values[np.isfinite(ds.cosine.values)]
    assert np.all(np.abs(cos) <= 1 + 1e-5)
    np.testing.assert_allclose(ds.unit_gram.sum("unit"), ds.gram, rtol=1e-4, atol=1e-8)
    assert "heldout_acc" in ds and ds.a.attrs["long_name"]
    ds.to_netcdf(tmp_path / "r.nc", engine="h5netcdf")
    xr.testing.assert_identical(xr.load_dataset(tmp_path / "r.nc", engine="h5netcdf"), ds)


def test_unshared_gram_is_zero_off_diagonal() -> None:
    ds = run(NCnetConfig(steps=20, unshared=True, units=True), [2], 4, progress=False)
    assert np.all(ds.gram.sel(task="A", task_j="B").values == 0)
    assert np.all(ds.gram.sel(task="A", task_j="A").values > 0)


def test_unshared_control_does_not_signal() -> None:
    ds = capacity(NCnetConfig(steps=300), [2, 3], 48, n_boot=200, progress=False)
    assert np.all(ds.unshared_delta.values == 0)
    assert np.all(ds.unshared_S.values <= 2)
    assert np.all(ds.unshared_remote_flip_fraction.values == 0)
    text = table(ds)
    assert "unshared control" in text and "CbD" in text


def test_run_validates_input() -> None:
    cfg = NCnetConfig(steps=2)
    with pytest.raises(ValueError, match="engine"):
        run(cfg, [1], 2, engine="magic", progress=False)
    with pytest.raises(ValueError, match="widths"):
        run(cfg, [0], 2, progress=False)
    with pytest.raises(ValueError, match="at least 2 seeds"):
        run(cfg, [1], 1, progress=False)
    with pytest.raises(ValueError, match="engine"):
        run(cfg, [1], 2, progress=False, engine="fortran")
    with pytest.raises(ValueError, match="CPU only"):
        run(cfg, [1], 2, progress=False, engine="c", device="meta")


# --- command line and scripts ----------------------------------------------------------------


def test_parse_widths() -> None:
    import argparse

    from gradcomp.commands.ncnet import parse_widths

    assert parse_widths("1-3,8") == [1, 2, 3, 8]
    assert parse_widths("4,2") == [2, 4]
    with pytest.raises(argparse.ArgumentTypeError):
        parse_widths("3-1")
    with pytest.raises(argparse.ArgumentTypeError):
        parse_widths("a")


def test_cli_tiny(tmp_path: Path, capsys) -> None:
    from gradcomp.cli import main

    out, fig = tmp_path / "n.nc", tmp_path / "n.png"
    rc = main(
        [
            "ncnet",
            "--widths",
            "1-2",
            "--seeds",
            "6",
            "--steps",
            "20",
            "--n-boot",
            "50",
            "--out",
            str(out),
            "--figure",
            str(fig),
            "--no-progress",
        ]
    )
    assert rc == 0 and out.exists() and fig.exists()
    text = capsys.readouterr().out
    assert "width" in text and "unshared control" in text
    ds = xr.load_dataset(out, engine="h5netcdf")
    assert {"S", "S_lo", "S_hi", "delta", "cbd_margin", "C", "unshared_S"} <= set(ds)
    assert ds.S.dims == ("width", "step")


def test_analysis_and_figure_scripts_tiny(tmp_path: Path) -> None:
    data, stem = tmp_path / "tiny.nc", tmp_path / "fig"
    analysis = load_script("analyses/ncnet_capacity.py")
    assert analysis.main(["--tiny", "--out", str(data)]) == 0
    figure = load_script("figures/ncnet_capacity.py")
    assert figure.main(["--tiny", "--data", str(data), "--out", str(stem)]) == 0
    assert stem.with_suffix(".png").exists() and stem.with_suffix(".pdf").exists()


@pytest.mark.slow
def test_default_family_exceeds_two_near_the_critical_width() -> None:
    ds = run(NCnetConfig(trace_every=(2000,)), [1, 3, 8], 256, progress=False)
    est = chsh.estimate(ds.a.isel(step=-1), ds.b.isel(step=-1), n_boot=500)
    assert float(est.S.sel(width=1)) < 0
    assert float(est.S_lo.sel(width=3)) > 2
    assert abs(float(est.S.sel(width=8)) - 2) < 0.1
    ctrl = run(replace(NCnetConfig(trace_every=(2000,)), unshared=True), [3], 256, progress=False)
    cest = chsh.estimate(ctrl.a.isel(step=-1), ctrl.b.isel(step=-1), n_boot=500)
    assert float(cest.S_lo.squeeze()) <= 2 and float(cest.delta.squeeze()) == 0


@pytest.mark.gpu
def test_cuda_equals_cpu_in_float64() -> None:
    cfg = NCnetConfig(steps=40, dtype="float64", trace_every=20, units=True)
    cpu = train_fast(plan(cfg, [1, 3], list(range(8))), device="cpu", engine="torch")
    gpu = train_fast(plan(cfg, [1, 3], list(range(8))), device="cuda", engine="torch")
    for k in cpu:
        np.testing.assert_allclose(gpu[k], cpu[k], rtol=1e-9, atol=1e-12, err_msg=k)
