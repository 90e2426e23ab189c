"""Diverged NCnet runs: flagged alike by every backend, NaN outcomes, left out of S or refused."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from gradcomp import chsh
from gradcomp._diverged import check_share
from gradcomp.ncnet import NCnetConfig, plan, run
from gradcomp.ncnet._compiled import available
from gradcomp.ncnet._experiment import capacity, table
from gradcomp.ncnet._fast import train_fast
from gradcomp.ncnet._run import _Bar, train
from gradcomp.reference.ncnet import train_ncnet

needs_cc = pytest.mark.skipif(not available(), reason="no C compiler for engine='c'")

#: relu at a huge learning rate in float64: about 2/3 of the runs overflow within a few steps,
#: the same runs in every backend (relu, unlike tanh, has no saturation that the backends round
#: differently). At lr >= 1e30 a few runs land within a factor ~P of the float64 maximum, where
#: the fast paths' reordered sums (no BLAS, see _fast.py) overflow and the references' do not.
BLOWUP = dict(activation="relu", lr=1e15, steps=12, trace_every=3, dtype="float64")
WIDTHS, SEEDS = [1, 3], list(range(16))


@pytest.fixture(scope="module")
def blowup() -> dict[str, dict[str, np.ndarray]]:
    cfg = NCnetConfig(**BLOWUP)
    out = {
        "torch": train_fast(plan(cfg, WIDTHS, SEEDS), engine="torch"),
        "vmap": train(plan(cfg, WIDTHS, SEEDS), "vmap"),
        "loop": train(plan(cfg, WIDTHS, SEEDS), "loop"),
        "reference": train_ncnet(cfg, WIDTHS, SEEDS),
    }
    if available():
        out["c"] = train_fast(plan(cfg, WIDTHS, SEEDS), engine="c")
    return out


def test_every_backend_flags_the_same_runs(blowup) -> None:
    ref = blowup["reference"]["diverged"]  # (trace, width, setting, seed), the per-run reference
    assert ref.dtype == bool and 0.2 < ref[-1].mean() < 0.9  # some runs diverge, some do not
    assert not ref[0].any()  # step 0: every run starts finite
    assert (np.diff(ref.astype(int), axis=0) >= 0).all()  # once diverged, always diverged
    assert (ref >= ~np.isfinite(blowup["reference"]["loss"]).all(-1)).all()  # a NaN loss flags
    for name, tr in blowup.items():
        np.testing.assert_array_equal(tr["diverged"], ref, err_msg=name)
        # outcomes: NaN exactly for diverged runs (both heads), ±1 otherwise
        nan = np.isnan(tr["outcome"])
        np.testing.assert_array_equal(nan, np.repeat(ref[..., None], 2, -1), err_msg=name)
        assert set(np.unique(tr["outcome"][~nan])) <= {-1.0, 1.0}


@pytest.mark.parametrize("backend", ["torch", pytest.param("c", marks=needs_cc)])
def test_checking_at_traced_steps_misses_no_divergence(backend: str) -> None:
    """Parameters stay non-finite once they are, so the final flag does not depend on which
    steps are traced: tracing only the last step flags the same runs as tracing every step."""
    every = train_fast(
        plan(NCnetConfig(**{**BLOWUP, "trace_every": 1}), WIDTHS, SEEDS), engine=backend
    )
    last = train_fast(
        plan(NCnetConfig(**{**BLOWUP, "trace_every": (12,)}), WIDTHS, SEEDS), engine=backend
    )
    assert last["diverged"].shape[0] == 1
    np.testing.assert_array_equal(last["diverged"][-1], every["diverged"][-1])
    # and with every step traced, the flag starts at the first non-finite loss or parameter
    first = every["diverged"].argmax(0)
    assert (first[every["diverged"][-1]] >= 1).all()


@needs_cc
def test_c_kernel_keeps_saturated_float32_runs_finite() -> None:
    """At lr = 20 the float32 kernel made 57 % of the width-3 runs NaN (an overflowing exp
    divided through a fast-math reciprocal estimate); torch and the kernel now agree."""
    cfg = NCnetConfig(lr=20.0, steps=200)
    c = train_fast(plan(cfg, [3], list(range(64))), engine="c")
    assert not c["diverged"].any() and np.isfinite(c["loss"]).all()
    early = NCnetConfig(lr=20.0, steps=4, trace_every=1)
    c, t = (train_fast(plan(early, [3], list(range(64))), engine=b) for b in ("c", "torch"))
    np.testing.assert_allclose(c["loss"], t["loss"], rtol=2e-3, atol=1e-5)  # chaotic at lr 20


# --- S without diverged runs, the share, the refusal -----------------------------------------


@pytest.fixture(scope="module")
def blowup_capacity() -> xr.Dataset:
    cfg = NCnetConfig(**BLOWUP)
    return capacity(cfg, WIDTHS, SEEDS, n_boot=200, progress=False, max_diverged=1.0)


def test_estimate_leaves_out_seeds_with_a_diverged_run(blowup_capacity: xr.Dataset) -> None:
    ds = blowup_capacity
    assert ds.a.dtype == np.float32 and ds.diverged.dtype == bool
    np.testing.assert_array_equal(np.isnan(ds.a), ds.diverged)
    share = ds.diverged.mean(["seed", "alice", "bob"])
    np.testing.assert_allclose(ds.diverged_share, share)
    assert float(ds.diverged_share.isel(step=-1).max()) > 0.2
    for w in WIDTHS:
        for s in ds.step.values:
            cell = ds.sel(width=w, step=s)
            keep = ~cell.diverged.any(["alice", "bob"]).values
            assert int(cell.n_seeds) == keep.sum()
            assert int(cell.n_excluded) == len(SEEDS) - keep.sum()
            if keep.sum() < 2:
                assert np.isnan(float(cell.S))
                continue
            ref = chsh.estimate(cell.a[keep], cell.b[keep], n_boot=200)
            for v in ("S", "S_lo", "S_hi", "delta", "cbd_margin", "C", "p_value"):
                np.testing.assert_allclose(cell[v], ref[v], atol=1e-12, err_msg=f"{v} {w} {s}")
    assert "unshared_diverged_share" in ds and "unshared_n_excluded" in ds
    text = table(ds)
    assert "diverged" in text.splitlines()[1] and "excl" in text.splitlines()[1]
    row = next(r for r in text.splitlines()[2:] if r.split()[0] == "3")
    assert f"{float(ds.diverged_share.sel(width=3).isel(step=-1)):.1%}" in row


def test_refuses_above_max_diverged_naming_the_learning_rate() -> None:
    cfg = NCnetConfig(**BLOWUP)
    with pytest.raises(ValueError, match=r"learning rate 1e\+15.*max_diverged = 0.05.*smaller"):
        capacity(cfg, WIDTHS, SEEDS, n_boot=50, progress=False)
    share = xr.DataArray([0.0, 0.05], dims="width", coords={"width": [1, 2]})
    check_share(share, max_diverged=0.05, lr=1.0, what="t", cell="width")  # at the bound: fine
    with pytest.raises(ValueError, match="at width 2"):
        check_share(share, max_diverged=0.04, lr=1.0, what="t", cell="width")
    with pytest.raises(ValueError, match=r"max_diverged must be a share in \[0, 1\]"):
        check_share(share, max_diverged=2, lr=1.0, what="t", cell="width")


# --- the CLI -----------------------------------------------------------------------------------

TINY = ["--seeds", "8", "--n-boot", "50", "--figure", "none", "--no-progress"]


def _cli(args: list[str], tmp_path: Path) -> int:
    from gradcomp.cli import main

    return main(["ncnet", *args, *TINY, "--out", str(tmp_path / "n.nc")])


def test_cli_refuses_diverged_training_in_one_line(tmp_path: Path, capsys) -> None:
    blow = ["--activation", "relu", "--lr", "1e15", "--steps", "12", "--dtype", "float64"]
    assert _cli([*blow, "--widths", "3", "--engine", "torch"], tmp_path) != 0
    msg = capsys.readouterr().err.strip()
    assert msg.startswith("gradcomp ncnet: ") and "\n" not in msg
    assert "learning rate 1e+15" in msg and "diverged" in msg
    assert not (tmp_path / "n.nc").exists()


def test_cli_reports_the_diverged_share_per_width(tmp_path: Path, capsys) -> None:
    blow = ["--activation", "relu", "--lr", "1e15", "--steps", "12", "--dtype", "float64"]
    args = [*blow, "--widths", "1,3", "--engine", "torch", "--max-diverged", "1"]
    assert _cli(args, tmp_path) == 0
    text = capsys.readouterr().out
    ds = xr.load_dataset(tmp_path / "n.nc", engine="h5netcdf")
    assert ds.diverged.dtype == bool and "diverged_share" in ds and "n_excluded" in ds
    for w in (1, 3):
        row = next(r for r in text.splitlines() if r.split()[:1] == [str(w)])
        share = float(ds.diverged_share.sel(width=w).isel(step=-1))
        assert row.split()[-2] == f"{share:.1%}"
        assert int(row.split()[-1]) == int(ds.n_excluded.sel(width=w).isel(step=-1))


@pytest.mark.parametrize("engine", ["torch", pytest.param("c", marks=needs_cc)])
def test_cli_huge_learning_rate_gives_finite_outcomes_not_nan_read_as_minus_1(
    tmp_path: Path, engine: str
) -> None:
    """``--lr 1e30`` printed S = 2.000 [2.000, 2.000] from NaN heads read as outcome −1.

    The NaN came from the old ``-ffast-math`` kernel; the torch backend never produced it. With
    both backends computing the same bits, float32 tanh runs at lr 1e30 stay finite (saturated
    units, clamped ``exp``) on both: no run diverges and every outcome is a real ±1.
    """
    args = ["--lr", "1e30", "--widths", "3", "--steps", "50", "--engine", engine]
    assert _cli(args, tmp_path) == 0
    ds = xr.load_dataset(tmp_path / "n.nc", engine="h5netcdf")
    assert not ds.diverged.any()
    for v in ("a", "b"):
        assert np.isin(ds[v].values, [-1.0, 1.0]).all()


@needs_cc
def test_cli_lr_20_no_longer_diverges(tmp_path: Path, capsys) -> None:
    """``--lr 20`` at width 3: 57 % NaN runs and S = 1.031 before the kernel fix."""
    assert _cli(["--lr", "20", "--widths", "3", "--steps", "300", "--engine", "c"], tmp_path) == 0
    ds = xr.load_dataset(tmp_path / "n.nc", engine="h5netcdf")
    assert not ds.diverged.any() and float(ds.diverged_share.max()) == 0
    assert "0.0%" in capsys.readouterr().out


# --- progress bars -------------------------------------------------------------------------------


def test_progress_bars_have_distinct_labels_and_no_early_eta(capsys) -> None:
    capacity(NCnetConfig(steps=20), [1, 2], 4, n_boot=20, progress=True, engine="torch")
    err = capsys.readouterr().err
    assert "ncnet shared widths 1..2" in err and "control: unshared widths 1..2" in err
    buf = io.StringIO()
    bar = _Bar(total=100, warmup=10, file=buf, mininterval=0, desc="x")
    bar.update(1)
    assert bar.estimating and "estimating" in buf.getvalue()
    assert "<" not in buf.getvalue().split("\r")[-1]  # no remaining-time field yet
    bar.update(9)
    assert not bar.estimating
    bar.update(1)
    assert "<" in buf.getvalue().split("\r")[-1]  # now the estimate shows
    bar.close()


def test_progress_warmup_is_a_tenth_or_the_first_chunk(monkeypatch) -> None:
    seen = []
    orig = _Bar.__init__

    def spy(self, **kw):
        seen.append((kw["total"], kw["warmup"]))
        orig(self, **kw)

    monkeypatch.setattr(_Bar, "__init__", spy)
    cfg = NCnetConfig(steps=50)
    run(cfg, [1], 4, progress=False, engine="torch")
    run(cfg, [1], 40, chunk=2, progress=False, engine="torch")
    assert seen == [(50, 5), (1000, 50)]


# --- sweeps --------------------------------------------------------------------------------------


def test_sweep_chunks_carry_diverged_through_the_store(tmp_path: Path) -> None:
    from gradcomp.scaleout import ChunkStore, Grid, NCnetExperiment, open_store
    from gradcomp.scaleout.chunkio import _tally, run_chunk

    base = NCnetConfig(**BLOWUP)
    exp = NCnetExperiment(base, keep=("a", "b"))
    grid = Grid.build({"width": WIDTHS}, range(0, 16), 6, allowed=exp.axes())
    st = ChunkStore(tmp_path / "s", {"experiment": "ncnet", "config": exp.config()}, grid)
    for c in grid.chunks():
        _, payload, tally = run_chunk(c, exp)
        st.write(c, payload)
        part = exp(c.cell, c.seeds)
        assert set(part.data_vars) == {"a", "b", "diverged"}
        last = part.isel(step=-1)
        ok = ~last.diverged.any(["alice", "bob"]).values
        if ok.any():  # the progress bar's running S leaves diverged seeds out
            ab = (last.a * last.b).values[ok].sum(0)
            np.testing.assert_array_equal(tally[0], ab)
            assert tally[1] == ok.sum()
        else:
            assert tally is None
    ds = open_store(tmp_path / "s").load()
    ref = run(base, WIDTHS, range(16), progress=False, engine="torch")
    for var in ("a", "b", "diverged"):
        xr.testing.assert_equal(ds[var], ref[var].transpose(*ds[var].dims))
    assert ds.diverged.dtype == bool and ds.diverged.any() and not ds.diverged.all()
    assert _tally(ref.isel(width=0)) is not None
