"""LoRA experiment: data, model loading, bad input, and the vectorised ensemble against its loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("wordfreq")

from transformers import BertConfig, BertModel

from gradcomp.lora import ensemble as ens
from gradcomp.lora.data import encode, load_words, validate_languages
from gradcomp.lora.model import (
    DEFAULT_MODEL,
    LoraHeads,
    add_lora,
    check_tokenizer,
    load_encoder,
    lora_layers,
)
from gradcomp.reference.lora import train_members


def tiny_bert(dtype: torch.dtype = torch.float64, vocab: int = 50, layers: int = 2) -> BertModel:
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=vocab,
        hidden_size=16,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        attn_implementation="eager",
    )
    return BertModel(cfg, add_pooling_layer=False).to(dtype).eval()


@pytest.fixture(scope="module")
def minilm():
    return load_encoder(num_layers=1)


# ---------------------------------------------------------------- data
def test_words_splits_are_disjoint_and_labelled():
    d = load_words(per_language=20, heldout_fraction=0.4, seed=3)
    assert len(d.words) == 80 and len(set(d.words)) == 80
    assert not set(d.train_words) & set(d.heldout_words)
    assert d.n_train == 48
    lang = np.array(d.lang)
    np.testing.assert_array_equal(d.labels["A1"].numpy(), np.isin(lang, ["en", "de"]))
    np.testing.assert_array_equal(d.labels["B1"].numpy(), np.isin(lang, ["en", "fr"]))
    # default A2 = "freq:4.3-4.9": the words in the gap are left out, frequent = Zipf >= 4.9
    assert not ((d.zipf >= 4.3) & (d.zipf < 4.9)).any()
    np.testing.assert_array_equal(d.labels["A2"].numpy(), d.zipf >= 4.9)
    assert all(w.isalpha() for w in d.words)
    again = load_words(per_language=20, heldout_fraction=0.4, seed=3)
    assert again.words == d.words
    tasks = {"A1": "lang:en,de", "A2": "freq", "B1": "lang:en,fr", "B2": "length"}
    median = load_words(tasks=tasks, per_language=20, seed=3)  # "freq": the pool's median
    np.testing.assert_array_equal(
        median.labels["A2"].numpy(), median.zipf >= np.median(median.zipf)
    )


def test_unknown_language_and_bad_tasks_are_rejected():
    with pytest.raises(ValueError, match=r"unknown language code.*xx"):
        validate_languages(["en", "xx"])
    with pytest.raises(ValueError, match="unknown language code"):
        load_words(["en", "klingon"], per_language=5)
    with pytest.raises(ValueError, match="proper, non-empty subset"):
        load_words(tasks={"A1": "lang:ru", "A2": "freq", "B1": "lang:en", "B2": "length"})
    with pytest.raises(ValueError, match="unknown task spec"):
        load_words(tasks={"A1": "colour", "A2": "freq", "B1": "lang:en", "B2": "length"})
    with pytest.raises(ValueError, match="missing"):
        load_words(tasks={"A1": "freq"})
    for band in ("freq:4.9-4.3", "freq:a-b"):
        with pytest.raises(ValueError, match="band"):
            load_words(tasks={"A1": "lang:en,de", "A2": band, "B1": "lang:en,fr", "B2": "length"})


def test_script_task_and_encoding(minilm):
    _, tok = minilm
    tasks = {"A1": "script:cyrillic", "A2": "freq", "B1": "lang:en", "B2": "length:6"}
    d = load_words(["en", "ru"], tasks, per_language=10)
    np.testing.assert_array_equal(d.labels["A1"].numpy(), np.array(d.lang) == "ru")
    ids, mask = encode(tok, d.words, max_length=5)
    assert ids.shape == mask.shape == (20, 5)
    assert (ids[:, 0] == tok.cls_token_id).all()


# ---------------------------------------------------------------- model and bad input
def test_bundled_minilm_loads_offline(minilm):
    enc, tok = minilm
    assert enc.config.hidden_size == 384 and len(enc.encoder.layer) == 1
    model = LoraHeads(add_lora(enc, 2))
    assert all(
        not p.requires_grad
        for n, p in model.named_parameters()
        if "lora_" not in n and "heads" not in n
    )
    layers = lora_layers(model)
    assert list(layers) == [
        f"encoder.layer.0.attention.self.{m}" for m in ("query", "key", "value")
    ]
    ffn = lora_layers(LoraHeads(add_lora(enc, 1, ffn=True)))
    assert "encoder.layer.0.intermediate.dense" in ffn and "encoder.layer.0.output.dense" in ffn
    ids, mask = encode(tok, ["hello", "haus"], 6)
    out = model(ids, mask)
    assert out["A"].shape == out["B"].shape == (2, 2)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_load_encoder_gives_the_asked_dtype(dtype):
    # transformers < 4.56 knows only torch_dtype=, and raised TypeError on dtype=
    enc, _ = load_encoder(num_layers=1, dtype=dtype)
    assert {p.dtype for p in enc.parameters()} == {dtype}


@pytest.mark.parametrize(
    "version,key", [("4.40.0", "torch_dtype"), ("4.55.4", "torch_dtype"), ("4.56.0", "dtype")]
)
def test_dtype_keyword_follows_the_transformers_version(monkeypatch, version, key):
    import transformers

    from gradcomp.lora.model import _dtype_kwarg

    monkeypatch.setattr(transformers, "__version__", version)
    assert _dtype_kwarg(torch.float64) == {key: torch.float64}


def test_padding_changes_no_output():
    # the attention mask reaches the encoder (a 4D additive mask from transformers 5, a 3D keep
    # mask before): a word padded with masked junk tokens gives the logits of the bare word
    model = LoraHeads(add_lora(tiny_bert(), 2))
    ids = torch.tensor([[5, 7, 9]])
    padded = torch.tensor([[5, 7, 9, 3, 11, 2]])
    mask = torch.tensor([[1, 1, 1, 0, 0, 0]])
    bare, pad = model(ids, torch.ones_like(ids)), model(padded, mask)
    unmasked = model(padded, torch.ones_like(padded))
    for t in "AB":
        torch.testing.assert_close(pad[t], bare[t], rtol=1e-12, atol=1e-12)
        assert not torch.allclose(unmasked[t], bare[t], rtol=1e-6, atol=1e-9)


def test_missing_model_path_names_the_default(tmp_path):
    with pytest.raises(ValueError, match=rf"does not exist.*{DEFAULT_MODEL}.*local directory"):
        load_encoder(tmp_path / "nope")
    with pytest.raises(ValueError, match=rf"cannot load.*offline.*{DEFAULT_MODEL}"):
        load_encoder("no-such-org/no-such-model")


def test_lora_targeting_no_module_and_frozen_model_are_rejected():
    enc = tiny_bert()
    with pytest.raises(ValueError, match="match no Linear module"):
        add_lora(enc, 2, targets=("q_proj", "v_proj"))
    for p in enc.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable shared parameters"):
        LoraHeads(enc)
    with pytest.raises(ValueError, match="rank must be"):
        add_lora(enc, 0)


def test_tokenizer_model_mismatch_is_rejected(minilm, tmp_path):
    _, tok = minilm
    with pytest.raises(ValueError, match="tokenizer/model mismatch"):
        check_tokenizer(tok, tiny_bert(vocab=50))
    tiny_bert(torch.float32, vocab=50).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="tokenizer/model mismatch"):
        load_encoder(tmp_path)


# ---------------------------------------------------------------- the ensemble
def _problem(model, n_seeds=2, n_words=20, n_train=12, steps=4, batch=5, length=6):
    table = ens.member_table(n_seeds)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 50, (n_words, length), generator=g)
    mask = torch.ones(n_words, length, dtype=torch.int64)
    mask[::3, 4:] = 0
    lab = {t: torch.randint(0, 2, (n_words,), generator=g) for t in ("A1", "A2", "B1", "B2")}
    labels = torch.stack([torch.stack([lab[f"A{x}"], lab[f"B{y}"]]) for _, x, y in table])
    order = torch.stack([ens.batch_order(n_train, steps, batch, 100 + s) for s, _, _ in table])
    inits = [ens.init_member(model, 100 + s) for s, _, _ in table]
    init = {n: torch.stack([d[n] for d in inits]) for n in inits[0]}
    return ens.Batches(ids, mask, labels, order, n_train), init


@pytest.mark.parametrize(
    "dtype,rtol,atol", [(torch.float64, 1e-10, 1e-13), (torch.float32, 1e-4, 1e-6)]
)
def test_vmap_ensemble_equals_per_seed_loop(dtype, rtol, atol):
    """train_vmap and its fallback train_loop both equal the independent per-member reference."""
    model = LoraHeads(add_lora(tiny_bert(dtype), 2, ffn=True))
    data, init = _problem(model)
    every = lambda t: t % 2 == 0  # noqa: E731
    v = ens.train_vmap(model, init, data, lora_layers(model), lr=1e-2, schedule=every)
    lo = ens.train_loop(model, init, data, lora_layers(model), lr=1e-2, schedule=every)
    ref = train_members(model, init, data, lora_layers(model), lr=1e-2, schedule=every)
    assert v.steps == lo.steps == ref["steps"] == [0, 2, 4]
    assert v.layers == lo.layers == ref["layers"]
    for trace in (v, lo):
        for field in ("loss", "acc", "heldout_acc", "gram", "diverged"):
            a, b = getattr(trace, field), ref[field]
            assert a.shape == b.shape, field
            for k in range(a.shape[0]):  # seed by seed (member by member)
                np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=atol, err_msg=f"{field} {k}")
    assert np.abs(v.gram[:, -1, -1]).max() > 0  # training moved the LoRA weights
    assert v.loss[:, 0].std() > 0  # the members differ


def test_diverged_members_are_flagged_alike_by_vmap_and_loop():
    model = LoraHeads(add_lora(tiny_bert(torch.float32), 2))
    data, init = _problem(model, steps=4)
    name = next(n for n in init if ".lora_A" in n)
    init[name][1, 0, 0] = float("nan")  # member 1 is NaN from the start; the others train
    every = lambda t: t % 2 == 0  # noqa: E731
    groups = lora_layers(model)
    for lr in (1e-2, 1e30):
        v = ens.train_vmap(model, init, data, groups, lr=lr, schedule=every)
        lo = ens.train_loop(model, init, data, groups, lr=lr, schedule=every)
        ref = train_members(model, init, data, groups, lr=lr, schedule=every)
        assert v.diverged.dtype == bool and v.diverged.shape == (8, 3)
        np.testing.assert_array_equal(v.diverged, lo.diverged)
        np.testing.assert_array_equal(v.diverged, ref["diverged"])
        assert v.diverged[1].all()  # NaN parameters: flagged from step 0
        if lr < 1:
            assert not np.delete(v.diverged, 1, axis=0).any()  # no member is harmed by another
        else:
            assert not v.diverged[[0, *range(2, 8)], 0].any() and v.diverged[:, -1].all()


def _naive_gram(model, params, ids, mask, y, groups):
    """Obviously correct: load a member's parameters, plain forward, autograd.grad per task."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in params:
                p.copy_(params[n])
    out = model(ids, mask)
    shared = {n: p for n, p in model.named_parameters() if ".lora_" in n}
    g = []
    for i, t in enumerate("AB"):
        loss = torch.nn.functional.cross_entropy(out[t], y[i])
        gs = torch.autograd.grad(loss, list(shared.values()), retain_graph=True)
        g.append(dict(zip(shared, gs, strict=True)))
    rows = []
    for names in groups.values():
        vec = [torch.cat([d[n].flatten() for n in names]) for d in g]
        rows.append(torch.stack([torch.stack([a @ b for b in vec]) for a in vec]))
    rows.append(sum(rows))
    return torch.stack(rows)


def test_ensemble_gram_matches_naive_autograd_after_training():
    model = LoraHeads(add_lora(tiny_bert(), 3))
    groups = lora_layers(model)
    data, init = _problem(model, n_seeds=1, steps=3)
    trace = ens.train_vmap(model, init, data, groups, lr=5e-2)
    # re-train member 2 by hand to the last step with the loop, then compare the final Gram
    one = ens.Batches(data.ids, data.mask, data.labels[2:3], data.order[2:3], data.n_train)
    params = {n: v[2:3].clone().requires_grad_() for n, v in init.items()}
    opt = torch.optim.Adam(params.values(), lr=5e-2)
    for t in range(3):
        idx = one.order[0, t]
        y = one.labels[0][:, idx]
        out = torch.func.functional_call(
            model, {n: p[0] for n, p in params.items()}, (one.ids[idx], one.mask[idx])
        )
        loss = sum(torch.nn.functional.cross_entropy(out[x], y[i]) for i, x in enumerate("AB"))
        opt.zero_grad()
        loss.backward()
        opt.step()
    idx = one.order[0, 3]
    naive = _naive_gram(
        model,
        {n: p[0].detach() for n, p in params.items()},
        one.ids[idx],
        one.mask[idx],
        one.labels[0][:, idx],
        groups,
    )
    np.testing.assert_allclose(trace.gram[2, -1], naive.detach().numpy(), rtol=1e-8, atol=1e-14)
    # accuracies: a plain forward of the same (copied-in) parameters on every word
    with torch.no_grad():
        out = model(one.ids, one.mask)
    for i, t in enumerate("AB"):
        right = (out[t].argmax(-1) == one.labels[0, i]).double()
        assert trace.acc[2, -1, i] == pytest.approx(float(right[: one.n_train].mean()))
        assert trace.heldout_acc[2, -1, i] == pytest.approx(float(right[one.n_train :].mean()))


def test_common_random_numbers_across_settings():
    model = LoraHeads(add_lora(tiny_bert(), 1))
    data, init = _problem(model, n_seeds=2)
    table = ens.member_table(2)
    for s in range(2):
        rows = np.flatnonzero(table[:, 0] == s)
        for v in init.values():
            assert all(torch.equal(v[rows[0]], v[r]) for r in rows)
        assert all(torch.equal(data.order[rows[0]], data.order[r]) for r in rows)
    assert not torch.equal(init[next(iter(init))][0], init[next(iter(init))][4])
    trace = ens.train_vmap(model, init, data, lora_layers(model), lr=1e-2)
    # at step 0 head A's loss depends on Alice's setting only: same for bob = 1 and 2
    np.testing.assert_allclose(trace.loss[0::2, 0, 0], trace.loss[1::2, 0, 0], rtol=1e-12)


@pytest.mark.gpu
def test_vmap_ensemble_equals_loop_on_cuda():
    device = torch.device("cuda")
    model = LoraHeads(add_lora(tiny_bert(torch.float32), 2)).to(device)
    data, init = _problem(model)
    data = ens.Batches(
        *(x.to(device) for x in (data.ids, data.mask, data.labels, data.order)), data.n_train
    )
    init = {n: v.to(device) for n, v in init.items()}
    v = ens.train_vmap(model, init, data, lora_layers(model), lr=1e-2)
    lo = ens.train_loop(model, init, data, lora_layers(model), lr=1e-2)
    np.testing.assert_allclose(v.loss, lo.loss, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(v.gram, lo.gram, rtol=1e-3, atol=1e-7)


@settings(max_examples=8, deadline=None)
@given(
    langs=st.lists(
        st.sampled_from(["en", "de", "fr", "es", "it", "nl", "pt", "sv"]),
        min_size=2,
        max_size=4,
        unique=True,
    ),
    seed=st.integers(0, 1000),
    frac=st.floats(0.3, 0.7),
)
def test_splits_never_share_a_word_property(langs, seed, frac):
    tasks = {"A1": f"lang:{langs[0]}", "A2": "freq", "B1": f"lang:{langs[1]}", "B2": "length"}
    try:
        d = load_words(langs, tasks, per_language=12, heldout_fraction=frac, seed=seed)
    except ValueError as err:  # a tiny split may hold one class of a task: a clear error
        assert "single class" in str(err)
        assume(False)
    assert not set(d.train_words) & set(d.heldout_words)
    assert len(d.words) == 12 * len(langs) == len(set(d.words))
    assert all(d.lang.count(c) == 12 for c in langs)
    np.testing.assert_array_equal(d.labels["A1"].numpy(), np.array(d.lang) == langs[0])
