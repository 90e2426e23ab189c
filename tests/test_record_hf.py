"""A tiny randomly initialised BERT with peft LoRA adapters: the shared parameters are the LoRA
weights; every strategy equals the per-task autograd loop (float64)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import gradcomp
from gradcomp.reference import gram_reference, per_task_gradients

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

TASKS = ["en", "de", "fr"]
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning:transformers")


def _bert_lora() -> tuple[nn.Module, nn.ModuleDict]:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=24, max_position_embeddings=16, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, attn_implementation="eager",
    )  # fmt: skip
    bert = transformers.BertModel(config, add_pooling_layer=False).double()
    lora = peft.LoraConfig(
        r=2, lora_alpha=4, target_modules=["query", "value"], lora_dropout=0.0,
        init_lora_weights=False,  # random A and B, so every LoRA weight gets a gradient
    )  # fmt: skip
    model = peft.get_peft_model(bert, lora)
    heads = nn.ModuleDict({t: nn.Linear(16, 1) for t in TASKS}).double()
    return model, heads


@pytest.mark.parametrize("strategy", ["loop", "batched", "features", "rows", "auto"])
def test_bert_lora_shared_lora_weights(strategy: str) -> None:
    model, heads = _bert_lora()
    whole = nn.ModuleDict({"bert": model, "heads": heads})
    ids = torch.randint(1, 50, (6, 5), generator=torch.Generator().manual_seed(1))
    rows = {t: slice(2 * i, 2 * i + 2) for i, t in enumerate(TASKS)}
    y = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with gradcomp.record(whole, TASKS, strategy=strategy, units=True) as rec:
        for _ in range(2):
            h = model(input_ids=ids).last_hidden_state
            cls = h[:, 0]
            losses = {
                t: (heads[t](cls[r]).squeeze(-1) - y[r]).pow(2).mean() for t, r in rows.items()
            }
            named = dict(whole.named_parameters())
            lora_names = [n for n, p in named.items() if "lora_" in n and p.requires_grad]
            grads = per_task_gradients(list(losses.values()), [named[n] for n in lora_names])
            whole.zero_grad()
            rec.backward(losses, features=h, rows=rows)
    ds = rec.to_dataset()
    assert json.loads(ds.attrs["shared_parameters"]) == lora_names  # only the LoRA weights
    assert len(lora_names) == 8
    got = ds.gram.isel(step=-1)
    np.testing.assert_allclose(got.sel(layer="all").values, gram_reference(grads), 1e-9, 1e-12)
    members = json.loads(ds.attrs["layer_members"])
    for layer, ps in members.items():
        want = gram_reference(grads, [lora_names.index(p) for p in ps])
        np.testing.assert_allclose(got.sel(layer=layer).values, want, 1e-9, 1e-12)
    assert ds.sizes["unit"] == 16  # lora_B: 16 output units; lora_A: 2 (NaN-padded)
    assert float(ds.grad_norm.sel(layer="all").min()) > 0


@pytest.mark.parametrize("strategy", ["rows", "batched"])
def test_full_bert_fine_tuning_rows(strategy: str) -> None:
    """Every BERT parameter shared (found by shared=None): word/token-type embeddings and
    LayerNorms go through the row hooks, the broadcast position embeddings through the fallback."""
    model, heads = _bert_lora()
    bert = model.get_base_model()
    for p in bert.parameters():
        p.requires_grad_(True)
    whole = nn.ModuleDict({"bert": bert, "heads": heads})
    ids = torch.randint(1, 50, (6, 5), generator=torch.Generator().manual_seed(3))
    rows = {t: [i, i + 3] for i, t in enumerate(TASKS)}  # interleaved rows, as index lists
    with gradcomp.record(whole, TASKS, strategy=strategy) as rec:
        h = bert(input_ids=ids).last_hidden_state
        losses = {t: heads[t](h[r, 0]).pow(2).mean() for t, r in rows.items()}
        named = dict(whole.named_parameters())
        shared = [n for n, p in named.items() if n.startswith("bert.") and p.requires_grad]
        grads = per_task_gradients(list(losses.values()), [named[n] for n in shared])
        rec.backward(losses, rows=rows)
    ds = rec.to_dataset()
    assert json.loads(ds.attrs["shared_parameters"]) == shared
    got = ds.gram.isel(step=0).sel(layer="all").values
    np.testing.assert_allclose(got, gram_reference(grads), 1e-9, 1e-12)
    members = json.loads(ds.attrs["layer_members"])
    for layer, ps in members.items():
        want = gram_reference(grads, [shared.index(p) for p in ps])
        np.testing.assert_allclose(ds.gram.isel(step=0).sel(layer=layer).values, want, 1e-9, 1e-12)
