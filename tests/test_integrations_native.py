"""Trainer integrations that behave like the trainers' own: the no-replay path (Lightning mixin,
HF Trainer mixin) against the replay callbacks and gradcomp.record, loggers (CSV, TensorBoard),
checkpoint resume, GradScaler, sharding and version errors, and DDP (2 gloo processes)."""

from __future__ import annotations

import csv
import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import xarray as xr
from packaging.version import Version
from test_integrations import STEPS, N, Rows, TwoTask, _data, _manual, _same
from torch import nn

import gradcomp
from gradcomp.integrations._common import Recording, check_unsharded, scalars

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*isinstance.treespec, LeafSpec.*:FutureWarning"),
    pytest.mark.filterwarnings("ignore:.*torch.jit.script_method.*:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning:transformers"),
    pytest.mark.filterwarnings("ignore::UserWarning:pytorch_lightning"),
    pytest.mark.filterwarnings("ignore::UserWarning:lightning_fabric"),
]


def _params_equal(a: nn.Module, b: nn.Module) -> None:
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def _scalars_of(ds: xr.Dataset, step: int) -> dict[str, float]:
    return scalars(
        list(ds["task"].values), list(ds["layer"].values), ds["gram"].sel(step=step).values
    )


def _tb_scalars(folder) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, dict[int, float]] = {}
    files = [os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs if "tfevents" in f]
    assert files, f"no event file under {folder}"
    for f in files:
        acc = EventAccumulator(f, size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
    return out


# ---------------------------------------------------------------- Hugging Face Trainer
def _hf(tmp_path, callback, *, native, batch=N, dropout=0.0, steps=STEPS, norm=False, **extra):
    from transformers import Trainer, TrainingArguments

    from gradcomp.integrations.hf import GradcompTrainerMixin

    class Native(GradcompTrainerMixin, Trainer):
        pass

    model = TwoTask(dropout, norm).double()
    kw = dict(
        output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=batch,
        learning_rate=0.1, optim="sgd", lr_scheduler_type="constant", max_grad_norm=0.0,
        report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True,
        disable_tqdm=True, seed=3, dataloader_num_workers=0,
    )  # fmt: skip
    kw.update(extra.pop("args", {}))
    cls = Native if native else Trainer
    trainer = cls(model, TrainingArguments(**kw), train_dataset=Rows(), callbacks=[callback])
    if not native and extra.get("attach"):
        callback.attach(trainer)
    trainer.train(resume_from_checkpoint=extra.get("resume"))
    return model


def test_hf_mixin_records_the_real_step_like_record_and_the_replay(tmp_path):
    pytest.importorskip("transformers")
    from gradcomp.integrations.hf import GradcompCallback

    every = gradcomp.linear(2)
    native = GradcompCallback(["a", "b"], every=every)
    _hf(tmp_path, native, native=True)
    _same(native.to_dataset(), _manual(every))
    # minibatches, dropout, BatchNorm: the no-replay statistics equal the replay callback's and
    # the parameters and buffers equal a plain run's, bit for bit
    opts = dict(batch=4, dropout=0.3, steps=6, norm=True)
    plain = _hf(tmp_path, GradcompCallback(["a", "b"], every=10**6), native=False, **opts)
    replay = GradcompCallback(["a", "b"])
    _hf(tmp_path, replay, native=False, **opts)
    native = GradcompCallback(["a", "b"], path=tmp_path / "rec.nc")
    recorded = _hf(tmp_path, native, native=True, **opts)
    _params_equal(plain, recorded)
    _same(native.to_dataset(), replay.to_dataset())
    assert native.to_dataset().sizes["step"] == 6


def test_hf_scalars_reach_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from gradcomp.integrations.hf import GradcompCallback

    logs = tmp_path / "tb"
    for native in (True, False):
        cb = GradcompCallback(["a", "b"], log_every=2)
        args = {"report_to": ["tensorboard"], "output_dir": str(logs / str(native))}
        _hf(tmp_path, cb, native=native, steps=5, args=args, attach=True)
        ds = cb.to_dataset()
        got = _tb_scalars(logs / str(native))
        for step in (0, 2, 4):
            want = _scalars_of(ds, step)
            for name, value in want.items():
                np.testing.assert_allclose(got[f"train/{name}"][step], value, rtol=1e-6)
        assert sorted(got["train/gradcomp/cosine/all/a__b"]) == [0, 2, 4]
        assert {"train/gradcomp/conflict_share/trunk.0", "train/gradcomp/grad_norm/all/b"} <= set(
            got
        )


def test_hf_resume_appends_to_the_recording(tmp_path):
    import transformers

    from gradcomp.integrations.hf import GradcompCallback

    if Version(transformers.__version__) < Version("4.47") and Version(
        torch.__version__
    ) >= Version("2.6"):
        pytest.skip(
            "transformers < 4.47 cannot reload its own rng_state.pth under torch >= 2.6's "
            "weights_only torch.load (huggingface/transformers#34631): no resume to test"
        )

    path = tmp_path / "rec.nc"
    save = {"save_strategy": "steps", "save_steps": 3}
    first = GradcompCallback(["a", "b"], path=path)
    _hf(tmp_path / "out", first, native=True, batch=4, steps=3, args=save)
    before = xr.open_dataset(path, engine="h5netcdf").load()
    assert list(before["step"].values) == [0, 1, 2]
    again = GradcompCallback(["a", "b"], path=path)
    ckpt = str(tmp_path / "out" / "checkpoint-3")
    _hf(tmp_path / "out", again, native=True, batch=4, steps=5, args=save, resume=ckpt)
    after = xr.open_dataset(path, engine="h5netcdf").load()
    assert list(after["step"].values) == [0, 1, 2, 3, 4]
    for name in ("loss", "gram"):
        xr.testing.assert_equal(after[name].isel(step=slice(0, 3)), before[name])
    # the resumed steps are those of an uninterrupted run
    straight = GradcompCallback(["a", "b"])
    _hf(tmp_path / "straight", straight, native=True, batch=4, steps=5)
    ref = straight.to_dataset()
    for name in ("loss", "gram"):
        xr.testing.assert_allclose(after[name], ref[name], rtol=1e-10, atol=1e-14)


def test_hf_version_and_sharding_errors(tmp_path, monkeypatch):
    import transformers

    from gradcomp.integrations.hf import GradcompCallback

    monkeypatch.setattr(transformers, "__version__", "4.44.2")
    with pytest.raises(ImportError, match=r"transformers >= 4.45.*found 4.44.2"):
        GradcompCallback(["a", "b"])
    monkeypatch.undo()
    monkeypatch.delattr(transformers.TrainerCallback, "on_pre_optimizer_step")
    with pytest.raises(ImportError, match="on_pre_optimizer_step"):
        GradcompCallback(["a", "b"])
    monkeypatch.undo()
    model = TwoTask().double()
    model.trunk[0].weight.ds_id = 7  # what DeepSpeed ZeRO-3 puts on its partitioned parameters
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    with pytest.raises(ValueError, match="ZeRO-3"):
        Trainer(model, args, train_dataset=Rows(), callbacks=[GradcompCallback(["a", "b"])])


# ---------------------------------------------------------------- Lightning
def _module(pl, *, native, dropout=0.0, norm=False, manual=False):
    from gradcomp.integrations.lightning import GradcompLightningMixin

    bases = (GradcompLightningMixin, pl.LightningModule) if native else (pl.LightningModule,)

    class Module(*bases):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.net = TwoTask(dropout, norm).double()
            self.automatic_optimization = not manual

        def task_losses(self, batch):
            return self.net(**batch)["losses"]

        def training_step(self, batch, batch_idx):
            out = self.net(**batch)
            if not native:
                return out["loss"]
            loss = self.training_loss(out["losses"])
            if manual:
                opt = self.optimizers()
                opt.zero_grad()
                self.manual_backward(loss)
                opt.step()
                return None
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return Module()


def _lightning(cb, *, native, batch=N, steps=STEPS, ckpt=None, resume=None, logger=False, **kw):
    pl = pytest.importorskip("pytorch_lightning")
    module = _module(pl, native=native, **kw)
    loader = torch.utils.data.DataLoader(Rows(), batch_size=batch, shuffle=False)
    callbacks = [cb] + ([ckpt] if ckpt is not None else [])
    trainer = pl.Trainer(
        max_steps=steps, accelerator="cpu", devices=1, logger=logger,
        enable_checkpointing=ckpt is not None, enable_progress_bar=False,
        enable_model_summary=False, callbacks=callbacks, log_every_n_steps=1,
    )  # fmt: skip
    torch.manual_seed(5)
    trainer.fit(module, loader, ckpt_path=resume)
    return module


def _lightning_ref(every):
    ref = _manual(every)
    return ref.assign_coords(layer=[f"net.{n}" if n != "all" else n for n in ref["layer"].values])


@pytest.mark.parametrize("manual", [False, True])
def test_lightning_mixin_records_the_real_step_like_record_and_the_replay(manual):
    pytest.importorskip("pytorch_lightning")
    from gradcomp.integrations.lightning import GradcompLightningCallback

    every = gradcomp.linear(2)
    cb = GradcompLightningCallback(["a", "b"], every=every)
    _lightning(cb, native=True, manual=manual)
    _same(cb.to_dataset(), _lightning_ref(every))
    if manual:
        return
    plain = _lightning(GradcompLightningCallback(["a", "b"], every=10**6), native=False,
                       dropout=0.3, batch=4, steps=6, norm=True)  # fmt: skip
    replay = GradcompLightningCallback(["a", "b"])
    _lightning(replay, native=False, dropout=0.3, batch=4, steps=6, norm=True)
    native = GradcompLightningCallback(["a", "b"])
    recorded = _lightning(native, native=True, dropout=0.3, batch=4, steps=6, norm=True)
    _params_equal(plain, recorded)
    _same(native.to_dataset(), replay.to_dataset())


@pytest.mark.parametrize("native", [True, False])
def test_lightning_scalars_reach_csv_and_tensorboard(tmp_path, native):
    pl = pytest.importorskip("pytorch_lightning")
    pytest.importorskip("tensorboard")
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    from gradcomp.integrations.lightning import GradcompLightningCallback

    loggers = [CSVLogger(tmp_path, name="csv"), TensorBoardLogger(tmp_path, name="tb")]
    cb = GradcompLightningCallback(["a", "b"], log_every=2)
    _lightning(cb, native=native, steps=5, logger=loggers)
    assert isinstance(loggers[0], pl.loggers.CSVLogger)
    ds = cb.to_dataset()
    with open(os.path.join(loggers[0].log_dir, "metrics.csv")) as f:
        rows = [r for r in csv.DictReader(f) if r.get("gradcomp/cosine/all/a__b")]
    assert [int(r["step"]) for r in rows] == [0, 2, 4]
    events = _tb_scalars(loggers[1].log_dir)
    for row in rows:
        step = int(row["step"])
        for name, value in _scalars_of(ds, step).items():
            np.testing.assert_allclose(float(row[name]), value, rtol=1e-12)
            np.testing.assert_allclose(events[name][step], value, rtol=1e-6)


def test_lightning_resume_appends_to_the_recording(tmp_path):
    pl = pytest.importorskip("pytorch_lightning")
    from gradcomp.integrations.lightning import GradcompLightningCallback

    path = tmp_path / "rec.nc"

    def ckpt():
        return pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4,
                                            save_top_k=-1)  # fmt: skip

    first = GradcompLightningCallback(["a", "b"], path=path, flush_every=100)
    _lightning(first, native=True, batch=4, steps=4, ckpt=ckpt())  # one epoch
    before = xr.open_dataset(path, engine="h5netcdf").load()
    assert list(before["step"].values) == [0, 1, 2, 3]
    saved = torch.load(next((tmp_path / "ckpt").iterdir()), weights_only=False)
    state = next(v for k, v in saved["callbacks"].items() if "GradcompLightningCallback" in k)
    assert state == {"path": str(path), "steps": 4}
    again = GradcompLightningCallback(["a", "b"], path=path)
    resume = str(next((tmp_path / "ckpt").iterdir()))
    _lightning(again, native=True, batch=4, steps=6, resume=resume)
    after = xr.open_dataset(path, engine="h5netcdf").load()
    assert list(after["step"].values) == [0, 1, 2, 3, 4, 5]
    for name in ("loss", "gram"):
        xr.testing.assert_equal(after[name].isel(step=slice(0, 4)), before[name])
    # resumed at an epoch's end (Lightning restarts a plain DataLoader's epoch), the resumed
    # steps are those of an uninterrupted run: Lightning's own resume semantics, which older
    # releases (2.4) do not give (their resumed batches differ), whatever records them
    if Version(pl.__version__) >= Version("2.6"):
        straight = GradcompLightningCallback(["a", "b"])
        _lightning(straight, native=True, batch=4, steps=6)
        for name in ("loss", "gram"):
            xr.testing.assert_allclose(after[name], straight.to_dataset()[name], rtol=1e-10)
    # a recording that lost steps since the checkpoint is refused, not silently continued
    path.unlink()
    with pytest.raises(ValueError, match="holds 0 recorded step"):
        _lightning(GradcompLightningCallback(["a", "b"], path=path), native=True, batch=4,
                   steps=6, resume=resume)  # fmt: skip


def test_lightning_version_and_sharding_errors(monkeypatch):
    pl = pytest.importorskip("pytorch_lightning")
    from gradcomp.integrations import lightning as gl

    monkeypatch.setattr(gl._pl, "__version__", "1.9.5")
    with pytest.raises(ImportError, match=r"Lightning >= 2.0.*found 1.9.5"):
        gl.GradcompLightningCallback(["a", "b"])
    monkeypatch.undo()

    class FSDPStrategy(pl.strategies.SingleDeviceStrategy):
        pass

    cb = gl.GradcompLightningCallback(["a", "b"])
    trainer = type("Trainer", (), {"strategy": FSDPStrategy("cpu"), "global_step": 0})()
    with pytest.raises(ValueError, match="FSDPStrategy"):
        cb.on_train_start(trainer, _module(pl, native=True))


def test_sharded_parameters_are_refused():
    model = TwoTask()

    class FakeFSDP(nn.Module):
        pass

    fsdp = torch.distributed.fsdp
    with pytest.MonkeyPatch.context() as mp_:
        mp_.setattr(fsdp, "FullyShardedDataParallel", FakeFSDP)
        with pytest.raises(ValueError, match="FSDP"):
            check_unsharded(nn.Sequential(FakeFSDP(), model))
    with pytest.MonkeyPatch.context() as mp_:
        mp_.setattr(fsdp, "FSDPModule", FakeFSDP)
        with pytest.raises(ValueError, match="fully_shard"):
            check_unsharded(nn.Sequential(FakeFSDP(), model))
    with pytest.raises(ValueError, match="ZeRO stage 3"):
        check_unsharded(model, strategy=type("DeepSpeedStrategy", (), {"zero_stage_3": True})())
    with pytest.raises(ValueError, match="fsdp='full_shard'"):
        check_unsharded(model, args=type("Args", (), {"fsdp": "full_shard"})())
    check_unsharded(model, args=type("Args", (), {"fsdp": [], "deepspeed": None})())  # plain


# ---------------------------------------------------------------- GradScaler
def test_gradscaler_statistics_are_those_of_the_unscaled_gradients():
    d = _data(torch.float32)

    def run(scaler):
        model = TwoTask().float()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        rec = Recording(["a", "b"], {})
        rec.start(model, scaler=scaler)
        for step in range(3):
            opt.zero_grad()
            out = model(**d)
            rec.observe(out["losses"], step)
            if scaler is None:
                out["loss"].backward()
                opt.step()
            else:
                scaler.scale(out["loss"]).backward()
                scaler.step(opt)
                scaler.update()
        rec.stop()
        return model, rec.to_dataset()

    plain_model, ref = run(None)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    model, ds = run(scaler)
    assert scaler.get_scale() == 2.0**12  # no step skipped
    xr.testing.assert_allclose(ds["loss"], ref["loss"], rtol=0, atol=0)
    xr.testing.assert_allclose(ds["gram"], ref["gram"], rtol=1e-6, atol=0)
    _params_equal(plain_model, model)
    # without the division the Gram is off by the scale squared (the test can fail)
    raw = Recording(["a", "b"], {})
    raw.start(TwoTask().float())
    out = raw.recorder.model(**d)
    raw.observe({k: v * 2.0**12 for k, v in out["losses"].items()}, 0)
    np.testing.assert_allclose(
        raw.to_dataset()["gram"].isel(step=0).values / 2.0**24, ref["gram"].isel(step=0).values,
        rtol=1e-6,
    )  # fmt: skip


# ---------------------------------------------------------------- DDP (2 gloo processes)
WORLD = 2


def _ddp_worker(rank: int, port: int, out: str) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model = TwoTask().double()
        ddp = nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        d = {k: v[rank * 8 : rank * 8 + 8] for k, v in _data().items()}
        rec = Recording(["a", "b"], {"path": os.path.join(out, "rec.nc")})
        rec.start(model, ddp=ddp)
        for step in range(3):
            opt.zero_grad()
            result = ddp(**d)
            rec.observe(result["losses"], step)  # no replay: the real forward's losses
            result["loss"].backward()
            opt.step()
        rec.stop()
        ds = rec.to_dataset()
        ds.attrs = {}
        ds.to_netcdf(os.path.join(out, f"rank{rank}.nc"), engine="h5netcdf")
        torch.save({"params": model.state_dict(), "path": rec.path}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_statistics_of_the_global_batch_and_only_rank0_writes(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    mp.spawn(_ddp_worker, args=(port, str(tmp_path)), nprocs=WORLD, join=True)
    model = TwoTask().double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    d = _data()
    with gradcomp.record(model, ["a", "b"]) as rec:
        for step in range(3):
            opt.zero_grad()
            rec.backward(model(**d)["losses"], step=step)
            opt.step()
    ref = rec.to_dataset()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["rank0.nc", "rank0.pt", "rank1.nc", "rank1.pt", "rec.nc"]  # one rec.nc
    for rank in range(WORLD):
        got = xr.open_dataset(tmp_path / f"rank{rank}.nc", engine="h5netcdf").load()
        assert [str(v).removeprefix("module.") for v in got.layer.values] == list(ref.layer.values)
        got = got.assign_coords(layer=ref.layer)
        for var in ("loss", "gram", "cosine"):
            xr.testing.assert_allclose(got[var], ref[var], rtol=1e-12, atol=1e-14)
        state = torch.load(tmp_path / f"rank{rank}.pt")
        for name, p in model.state_dict().items():
            torch.testing.assert_close(state["params"][name], p, rtol=1e-12, atol=1e-14)
        assert state["path"] == (str(tmp_path / "rec.nc") if rank == 0 else None)


# ---------------------------------------------------------------- Recorder.resume, latest
def _record_steps(path, steps, *, resume=None):
    model = TwoTask().double()
    d = _data()
    with gradcomp.record(model, ["a", "b"], path=path, flush_every=2) as rec:
        if resume is not None:
            rec.resume(resume)
        for step in steps:
            rec.backward(model(**d)["losses"], step=step)
            latest = rec.latest
            assert latest is not None and latest[0] == step
    return rec


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_recorder_resume_keeps_the_steps_before_and_appends(tmp_path, suffix):
    path = tmp_path / f"rec{suffix}"
    full = _record_steps(path, range(5)).to_dataset()
    # resumed at step 3: steps 3 and 4 (recorded after the checkpoint) are dropped, then appended
    rec = _record_steps(path, [3, 4, 5], resume=3)
    ds = rec.to_dataset()
    assert list(ds["step"].values) == [0, 1, 2, 3, 4, 5]
    xr.testing.assert_equal(ds["gram"].isel(step=slice(0, 5)), full["gram"])
    if suffix == ".zarr":
        on_file = xr.open_zarr(path, consolidated=True).load()
        n = json.loads((path / "gradcomp.json").read_text())["steps"]
        assert n == 6 and on_file.sizes["step"] == 6
    else:
        on_file = xr.open_dataset(path, engine="h5netcdf").load()
    xr.testing.assert_equal(on_file["gram"], ds["gram"])
    _, loss, gram = rec.latest
    np.testing.assert_array_equal(gram, ds["gram"].sel(step=5).values)
    np.testing.assert_array_equal(loss, ds["loss"].sel(step=5).values)
    with pytest.raises(ValueError, match="does not follow"):
        _record_steps(path, [2], resume=3)
    # a missing file starts a new recording
    assert _record_steps(tmp_path / f"new{suffix}", [7], resume=7).to_dataset().sizes["step"] == 1


def test_lightning_fp16_with_a_gradscaler_records_unscaled_statistics():
    pl = pytest.importorskip("pytorch_lightning")
    from pytorch_lightning.plugins.precision import MixedPrecision

    from gradcomp.integrations.lightning import GradcompLightningCallback

    class Floats(Rows):
        def __getitem__(self, i):
            return {k: v.float() for k, v in super().__getitem__(i).items()}

    def fit(scale):
        module = _module(pl, native=True)
        module.net.float()
        scaler = None if scale is None else torch.amp.GradScaler("cpu", init_scale=scale)
        cb = GradcompLightningCallback(["a", "b"])
        trainer = pl.Trainer(
            max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, callbacks=[cb],
            plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)],
        )  # fmt: skip
        trainer.fit(module, torch.utils.data.DataLoader(Floats(), batch_size=N))
        return cb, cb.to_dataset(), scaler

    _, ref, _ = fit(None)  # fp16 autocast, no loss scaling
    cb, ds, scaler = fit(2.0**10)
    assert scaler is not None and scaler.get_scale() == 2.0**10  # no step skipped
    assert cb._rec._unscale is not None and cb._rec._unscale.scale == 2.0**10  # it was scaled
    xr.testing.assert_allclose(ds["loss"], ref["loss"], rtol=1e-6)
    xr.testing.assert_allclose(ds["gram"], ref["gram"], rtol=1e-4, atol=1e-8)


def test_more_than_one_rank_without_ddp_is_refused(monkeypatch):
    from gradcomp.integrations import _common

    monkeypatch.setattr(_common, "_world", lambda: (1, 2))
    rec = Recording(["a", "b"], {"path": "never.nc"})
    with pytest.raises(ValueError, match=r"2 ranks.*not wrapped in DistributedDataParallel"):
        rec.start(TwoTask())
    with pytest.raises(ValueError, match="log_every"):
        Recording(["a", "b"], {}, log_every=-1)
