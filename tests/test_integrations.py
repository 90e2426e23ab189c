"""Trainer callbacks (HF Trainer, Lightning), and the recorder under torch.compile and bf16."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

import gradcomp

N, STEPS = 16, 4

# third-party deprecations (Lightning 2.6, torch 2.13), not gradcomp's: keep -W error usable
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*isinstance.treespec, LeafSpec.*:FutureWarning"),
    pytest.mark.filterwarnings("ignore:.*torch.jit.script_method.*:DeprecationWarning"),
]


class TwoTask(nn.Module):
    """A shared trunk and two heads; forward returns the summed loss and the per-task losses."""

    def __init__(self, dropout: float = 0.0, norm: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        layers = [nn.Linear(4, 8), *([nn.BatchNorm1d(8)] if norm else []), nn.Tanh()]
        self.trunk = nn.Sequential(*layers, nn.Dropout(dropout))
        self.ha = nn.Linear(8, 1)
        self.hb = nn.Linear(8, 1)

    def forward(self, x, ya, yb):
        h = self.trunk(x)
        la = ((self.ha(h).squeeze(-1) - ya) ** 2).mean()
        lb = ((self.hb(h).squeeze(-1) - yb) ** 2).mean()
        return {"loss": la + lb, "losses": {"a": la, "b": lb}}


def _data(dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    return {
        k: torch.randn(N, *s, generator=g, dtype=dtype)
        for k, s in (("x", (4,)), ("ya", ()), ("yb", ()))
    }


class Rows(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.d = _data()

    def __len__(self) -> int:
        return N

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.d.items()}


def _manual(every, lr=0.1) -> xr.Dataset:
    """The reference: a plain full-batch SGD loop with gradcomp.record."""
    model = TwoTask().double()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    d = _data()
    with gradcomp.record(model, ["a", "b"], every=every) as rec:
        for step in range(STEPS):
            opt.zero_grad()
            rec.backward(model(**d)["losses"], step=step)
            opt.step()
    return rec.to_dataset()


def _same(ds: xr.Dataset, ref: xr.Dataset) -> None:
    assert set(ds.data_vars) == set(ref.data_vars)
    assert ds.sizes == ref.sizes
    for name in ref.data_vars:
        xr.testing.assert_allclose(ds[name], ref[name], rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------- Hugging Face Trainer
def _hf_train(tmp_path, callback, *, batch=N, dropout=0.0, steps=STEPS, norm=False):
    from transformers import Trainer, TrainingArguments

    model = TwoTask(dropout, norm).double()
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=batch,
        learning_rate=0.1, optim="sgd", lr_scheduler_type="constant", max_grad_norm=0.0,
        report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True,
        disable_tqdm=True, seed=3, dataloader_num_workers=0,
    )  # fmt: skip
    Trainer(model, args, train_dataset=Rows(), callbacks=[callback] if callback else []).train()
    return model


def test_hf_callback_records_like_record_and_leaves_training_alone(tmp_path):
    pytest.importorskip("transformers")
    from gradcomp.integrations.hf import GradcompCallback

    every = gradcomp.linear(2)
    cb = GradcompCallback(["a", "b"], every=every)
    _hf_train(tmp_path, cb)
    _same(cb.to_dataset(), _manual(every))
    # minibatches, dropout, BatchNorm: parameters and buffers are bit-identical with and
    # without the callback
    plain = _hf_train(tmp_path, None, batch=4, dropout=0.3, steps=6, norm=True)
    cb = GradcompCallback(["a", "b"], every=1, path=tmp_path / "rec.nc")
    recorded = _hf_train(tmp_path, cb, batch=4, dropout=0.3, steps=6, norm=True)
    for (name, p), q in zip(
        plain.state_dict().items(), recorded.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q), name
    ds = xr.open_dataset(tmp_path / "rec.nc", engine="h5netcdf")
    assert ds.sizes["step"] == 6 and list(ds["layer"].values) == ["trunk.0", "trunk.1", "all"]


def test_hf_callback_needs_per_task_losses(tmp_path):
    pytest.importorskip("transformers")
    from gradcomp.integrations.hf import GradcompCallback

    cb = GradcompCallback(["a", "b"], get_losses=lambda out: out["loss"])
    with pytest.raises((ValueError, TypeError)):
        _hf_train(tmp_path, cb, steps=1)
    with pytest.raises(ValueError, match="per-task losses"):
        from gradcomp.integrations._common import default_losses

        default_losses({"loss": torch.tensor(1.0)})


# ---------------------------------------------------------------- Lightning
def _lightning_train(callback, *, dropout=0.0, batch=N, steps=STEPS, norm=False):
    pl = pytest.importorskip("pytorch_lightning")

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = TwoTask(dropout, norm).double()

        def task_losses(self, batch):
            return self.net(**batch)["losses"]

        def training_step(self, batch, batch_idx):
            return self.net(**batch)["loss"]

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    module = Module()
    loader = torch.utils.data.DataLoader(Rows(), batch_size=batch, shuffle=False)
    trainer = pl.Trainer(
        max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
        callbacks=[callback] if callback else [],
    )  # fmt: skip
    torch.manual_seed(5)
    trainer.fit(module, loader)
    return module


def test_lightning_callback_records_like_record_and_leaves_training_alone():
    pytest.importorskip("pytorch_lightning")
    from gradcomp.integrations.lightning import GradcompLightningCallback

    every = gradcomp.linear(2)
    cb = GradcompLightningCallback(["a", "b"], every=every)
    _lightning_train(cb)
    ds = cb.to_dataset()
    ref = _manual(every)
    ref = ref.assign_coords(layer=[f"net.{n}" if n != "all" else n for n in ref["layer"].values])
    _same(ds, ref)
    plain = _lightning_train(None, dropout=0.3, batch=4, steps=6)
    recorded = _lightning_train(
        GradcompLightningCallback(["a", "b"]), dropout=0.3, batch=4, steps=6
    )
    for (name, p), q in zip(plain.named_parameters(), recorded.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_lightning_callback_needs_task_losses():
    pytest.importorskip("pytorch_lightning")
    import pytorch_lightning as pl

    from gradcomp.integrations.lightning import GradcompLightningCallback

    class NoLosses(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            return self.lin(batch).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = pl.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[GradcompLightningCallback(["a", "b"])],
    )
    with pytest.raises(ValueError, match="task_losses"):
        trainer.fit(NoLosses(), torch.utils.data.DataLoader(torch.randn(4, 2), batch_size=2))


# ---------------------------------------------------------------- torch.compile, bf16
class Deep(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh())
        self.ha = nn.Linear(8, 1)
        self.hb = nn.Linear(8, 1)

    def forward(self, x, ya, yb):
        h = self.trunk(x)
        return {
            "a": ((self.ha(h).squeeze(-1) - ya) ** 2).mean(),
            "b": ((self.hb(h).squeeze(-1) - yb) ** 2).mean(),
        }


def _run(model, *, shared=None, strategy="auto", context=contextlib.nullcontext, dtype=None):
    d = {k: v if dtype is None else v.to(dtype) for k, v in _data().items()}
    with gradcomp.record(model, ["a", "b"], shared=shared, strategy=strategy) as rec:
        for step in range(3):
            model.zero_grad()
            with context():
                losses = model(**d)
            rec.backward(losses, step=step)
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.1 * p.grad
    return rec.to_dataset()


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_record_under_torch_compile_with_explicit_shared(backend):
    ref = _run(Deep().double())
    model = Deep().double()
    compiled = torch.compile(model, backend=backend)
    ds = _run(compiled, shared=model.trunk, strategy="loop")
    np.testing.assert_allclose(ds["gram"].values, ref["gram"].values, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(ds["loss"].values, ref["loss"].values, rtol=1e-12)


def test_record_under_torch_compile_discovers_shared_or_says_it_cannot():
    ref = _run(Deep().double())
    compiled = torch.compile(Deep().double(), backend="aot_eager")
    ds = _run(compiled)  # shared=None: found from per-task gradients under compile
    assert list(ds["layer"].values) == list(ref["layer"].values) == ["trunk.0", "trunk.2", "all"]
    assert ds.attrs["shared_parameters"] == ref.attrs["shared_parameters"]
    np.testing.assert_allclose(ds["gram"].values, ref["gram"].values, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(ds["loss"].values, ref["loss"].values, rtol=1e-12)


def test_record_with_bf16_autocast_keeps_float32_statistics():
    ref = _run(Deep().float(), dtype=torch.float32)
    ds = _run(
        Deep().float(),
        dtype=torch.float32,
        context=lambda: torch.autocast("cpu", dtype=torch.bfloat16),
    )
    assert ds["gram"].dtype in (np.float32, np.float64)
    np.testing.assert_allclose(ds["gram"].values, ref["gram"].values, rtol=5e-2, atol=5e-3)
    assert not np.allclose(ds["gram"].values, ref["gram"].values, rtol=1e-6, atol=0)  # bf16 ran


def test_record_accumulates_bf16_gradients_in_float32():
    model = Deep().to(torch.bfloat16)
    d = {k: v.to(torch.bfloat16) for k, v in _data().items()}
    losses = model(**d)
    params = list(model.trunk.parameters())
    per_task = [torch.autograd.grad(losses[t], params, retain_graph=True) for t in "ab"]
    flat = [torch.cat([g.double().flatten() for g in gs]) for gs in per_task]
    expected = np.array([[float(a @ b) for b in flat] for a in flat])
    model.zero_grad()
    with gradcomp.record(model, ["a", "b"], shared=model.trunk) as rec:
        rec.backward(model(**d), step=0)
    ds = rec.to_dataset()
    assert ds["gram"].dtype in (np.float32, np.float64)
    # summing in bf16 would be off by ~1e-2; float32 accumulation of bf16 products agrees closely
    np.testing.assert_allclose(ds["gram"].sel(layer="all").values[0], expected, rtol=1e-4)


def test_hf_callback_on_a_lora_model_records_only_the_adapters(tmp_path):
    pytest.importorskip("peft")
    from transformers import BertConfig, BertModel, Trainer, TrainingArguments

    from gradcomp.integrations.hf import GradcompCallback
    from gradcomp.lora.model import LoraHeads, add_lora, lora_layers

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=30,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=8,
        attn_implementation="eager",
    )

    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = LoraHeads(add_lora(BertModel(cfg, add_pooling_layer=False), 2))

        def forward(self, ids, mask, ya, yb):
            out = self.net(ids, mask)
            la = nn.functional.cross_entropy(out["A"], ya)
            lb = nn.functional.cross_entropy(out["B"], yb)
            return {"loss": la + lb, "losses": {"A": la, "B": lb}}

    class Words(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 8

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            ids = torch.randint(3, 30, (5,), generator=g)
            return {
                "ids": ids,
                "mask": torch.ones(5, dtype=torch.int64),
                "ya": torch.tensor(i % 2),
                "yb": torch.tensor((i // 2) % 2),
            }

    model = Wrapped()
    cb = GradcompCallback(["A", "B"], every=1)
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-2,
        report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    Trainer(model, args, train_dataset=Words(), callbacks=[cb]).train()
    ds = cb.to_dataset()
    expected = {
        f"net.encoder.base_model.model.{m}.lora_{ab}.default"
        for m in lora_layers(model.net)
        for ab in "AB"
    }
    assert set(ds["layer"].values) == expected | {"all"}  # adapters only: no head, no frozen base
    assert ds.sizes["step"] == 2 and bool((ds["grad_norm"].sel(layer="all") > 0).all())
