"""Chunk functions a sweep can run: the contract, a toy model for tests, and NCnet.

An experiment is a picklable object with

- ``name``: a short string stored with the sweep;
- ``axes()``: the grid axis names it understands (any other axis is refused);
- ``config()``: a JSON-able dict of everything that determines its results (hashed into the store);
- ``__call__(cell, seeds) -> xr.Dataset``: the results for one grid cell (``axis -> value``) and a
  range of seeds, with a ``seed`` dimension whose coordinate equals ``seeds``. Seed ``k``'s result
  must depend only on ``(config, cell, k)``, never on which other seeds share the chunk.

The LoRA experiment (or any other) plugs in by providing these four members.
"""

from __future__ import annotations

import dataclasses
import json
import time
import zlib
from dataclasses import InitVar, dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import xarray as xr

from gradcomp.dims import ALICE, BOB, SEED, SETTINGS, STEP, annotate

__all__ = [
    "PINNED_ENGINES",
    "Experiment",
    "LoraSweepExperiment",
    "NCnetExperiment",
    "Toy",
    "check_engine",
]


@runtime_checkable
class Experiment(Protocol):
    """What :func:`gradcomp.scaleout.sweep` needs from a chunk function."""

    name: str

    def axes(self) -> tuple[str, ...]:
        """Grid axes this experiment accepts."""
        ...

    def config(self) -> dict[str, Any]:
        """Everything that determines the results, JSON-able."""
        ...

    def __call__(self, cell: dict[str, Any], seeds: range) -> xr.Dataset:
        """Results for one cell and a block of seeds (dimension ``seed``)."""
        ...


@dataclass(frozen=True)
class Toy:
    """A cheap local-hidden-variable model with ±1 outcomes, for tests and benchmarks.

    Per seed k a hidden angle λ_k ~ U[0, 2π) is drawn from a generator seeded by (k, cell);
    a(x) = sign cos(λ − α_x), b(y) = sign cos(λ − β_y), α = (0, π/2), β = (π/4 + θ, −π/4 + θ),
    and each outcome flips with probability ``noise``. Outcomes depend only on the head's own
    setting and λ, so S ≤ 2 for every seed sample (the bound is attained at θ = 0, noise = 0).
    The grid axes ``width`` and ``lr`` set θ = 0.1·width + lr (no meaning beyond giving cells
    different statistics).

    Args:
        noise: flip probability of each outcome.
        sleep: seconds to sleep per chunk (for fault tests); not part of :meth:`config`.
        fail_seed: raise ``RuntimeError`` in any chunk containing this seed (for tests); -1: never.
    """

    noise: float = 0.1
    sleep: float = 0.0
    fail_seed: int = -1
    name: str = "toy"

    def axes(self) -> tuple[str, ...]:
        return ("width", "lr")

    def config(self) -> dict[str, Any]:
        return {"noise": self.noise}

    def __call__(self, cell: dict[str, Any], seeds: range) -> xr.Dataset:
        if self.sleep:
            time.sleep(self.sleep)
        if self.fail_seed in seeds:
            raise RuntimeError(f"toy experiment asked to fail at seed {self.fail_seed}")
        theta = 0.1 * float(cell.get("width", 0)) + float(cell.get("lr", 0.0))
        salt = zlib.crc32(json.dumps(cell, sort_keys=True).encode())
        alpha = np.array([0.0, np.pi / 2])
        beta = np.array([np.pi / 4, -np.pi / 4]) + theta
        a = np.empty((len(seeds), 2, 2, 1), np.int8)
        b = np.empty_like(a)
        for i, k in enumerate(seeds):
            rng = np.random.default_rng([k, salt])
            lam = rng.uniform(0, 2 * np.pi)
            flips = rng.random((2, 2, 2)) < self.noise  # (head, alice, bob)
            oa = np.where(np.cos(lam - alpha) >= 0, 1, -1)[:, None] * np.ones((1, 2), int)
            ob = np.where(np.cos(lam - beta) >= 0, 1, -1)[None, :] * np.ones((2, 1), int)
            a[i, :, :, 0] = np.where(flips[0], -oa, oa)
            b[i, :, :, 0] = np.where(flips[1], -ob, ob)
        dims = (SEED, ALICE, BOB, STEP)
        coords = {SEED: np.arange(seeds.start, seeds.stop), ALICE: list(SETTINGS)}
        coords |= {BOB: list(SETTINGS), STEP: [0]}
        ds = xr.Dataset({"a": (dims, a), "b": (dims, b)}, coords=coords)
        labels = {"a": ("Alice's outcome", "1"), "b": ("Bob's outcome", "1")}
        return annotate(ds, labels)


#: the NCnet engines a sweep accepts: every engine of ``gradcomp.ncnet.ENGINES`` but ``"auto"``
PINNED_ENGINES = ("torch", "c", "vmap", "loop")


def check_engine(engine: Any) -> None:
    """Refuse an NCnet engine that is not pinned (see :class:`NCnetExperiment`)."""
    if engine not in PINNED_ENGINES:
        raise ValueError(f"engine must be one of {PINNED_ENGINES} (pinned), got {engine!r}")


def _ncnet_code() -> str:
    """sha256 (16 hex digits) of the source (``.py``, ``.c``, ``.h``) of ``gradcomp.ncnet``."""
    import hashlib
    from pathlib import Path

    import gradcomp.ncnet

    h = hashlib.sha256()
    for path in sorted(Path(gradcomp.ncnet.__file__).parent.iterdir()):
        if path.suffix not in (".py", ".c", ".h"):
            continue
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class NCnetExperiment:
    """NCnet ensembles (``gradcomp.ncnet.run``) as a sweep experiment.

    Grid axes: ``width`` (required) and any field of ``NCnetConfig`` (e.g. ``lr``), which replaces
    that field of ``config`` for the cell. Seed k's result depends only on (config, width, k), the
    contract of ``gradcomp.ncnet.run``. :meth:`config` includes a fingerprint of the source of
    ``gradcomp.ncnet``, so a store refuses chunks computed by changed code (float32 training is
    chaotic at large learning rates: a changed kernel flips outcomes of borderline seeds).

    Args:
        base: the base ``NCnetConfig``.
        device: torch device string for the workers.
        threads: torch intra-op threads per worker process (1: one core per worker).
        keep: variables to store (e.g. ``("a", "b", "acc")``); empty: all of them. The per-run
            ``diverged`` flag is stored whenever ``a`` or ``b`` is (their NaN means diverged).
        engine: ``ncnet.run``'s engine, pinned (never ``"auto"``): ``"auto"`` picks the compiled
            kernel only where a C compiler exists, so workers on different machines would compute
            (slightly, and in chaotic runs visibly) different float32 results.
    """

    base: Any
    device: str = "cpu"
    threads: int = 1
    keep: tuple[str, ...] = ()
    engine: str = "torch"
    name: str = "ncnet"
    backend: InitVar[Any] = None  # removed: refused with a pointer to ``engine``

    def __post_init__(self, backend: Any) -> None:
        if backend is not None:
            raise TypeError(
                f"NCnetExperiment no longer takes backend=: pass engine= one of {PINNED_ENGINES}"
            )

    def axes(self) -> tuple[str, ...]:
        fields = [f.name for f in dataclasses.fields(self.base)]
        return ("width", *sorted(f for f in fields if f not in ("width", "widths", "seeds")))

    def config(self) -> dict[str, Any]:
        # the code's fingerprint too: a store must not mix chunks computed by different code
        out = {
            "ncnet": dataclasses.asdict(self.base),
            "device": self.device,
            "engine": self.engine,
            "code": _ncnet_code(),
        }
        return out | ({"keep": list(self.keep)} if self.keep else {})

    def __call__(self, cell: dict[str, Any], seeds: range) -> xr.Dataset:
        import torch

        from gradcomp import ncnet

        if "width" not in cell:
            raise ValueError("the NCnet experiment needs a 'width' grid axis")
        torch.set_num_threads(self.threads)
        overrides = {k: v for k, v in cell.items() if k != "width"}
        cfg = dataclasses.replace(self.base, **overrides)
        check_engine(self.engine)
        ds = ncnet.run(
            cfg,
            [int(cell["width"])],
            list(seeds),
            device=self.device,
            progress=False,
            engine=self.engine,
        )
        ds = ds.squeeze("width", drop=True) if "width" in ds.dims else ds
        return ds[_kept(self.keep)] if self.keep else ds


@dataclass(frozen=True)
class LoraSweepExperiment:
    """The LoRA experiment (``gradcomp.lora.run``) as a sweep experiment.

    Grid axes: ``rank`` (required) and any scalar field of ``LoraExperiment`` (e.g. ``lr``). A chunk
    runs ``base`` with ``ranks=(rank,)`` and its block of seeds (``first_seed``, ``n_seeds``); this
    relies on the LoRA ensemble's contract that a seed's run depends only on (config, rank, seed)
    (per-seed generators for initialisation and data order). Calibrated thresholds are the same in
    every chunk: each chunk calibrates on the base's calibration seeds at the base's calibration
    rank (deterministic; fix ``thresholds`` in the base to skip the repeated calibration), and the
    control runs on the chunk's share of the base's ``control_seeds``.

    Args:
        base: the base ``gradcomp.lora.LoraExperiment`` (its ``ranks``/``n_seeds``/``first_seed``
            are replaced per chunk).
        keep: variables to store; empty: all of them (``diverged`` comes with ``a``, ``b``).
    """

    base: Any
    keep: tuple[str, ...] = ()
    name: str = "lora"

    def axes(self) -> tuple[str, ...]:
        skip = {"ranks", "n_seeds", "first_seed", "tasks", "languages", "targets"}
        fields = [f.name for f in dataclasses.fields(self.base) if f.name not in skip]
        return ("rank", *sorted(fields))

    def config(self) -> dict[str, Any]:
        cfg = dataclasses.asdict(self.base)
        for k in ("ranks", "n_seeds", "first_seed"):
            cfg.pop(k)
        return {"lora": cfg} | ({"keep": list(self.keep)} if self.keep else {})

    def __call__(self, cell: dict[str, Any], seeds: range) -> xr.Dataset:
        from gradcomp import lora

        if "rank" not in cell:
            raise ValueError("the LoRA experiment needs a 'rank' grid axis")
        overrides = {k: v for k, v in cell.items() if k != "rank"}
        base = dataclasses.replace(self.base, **overrides)
        if base.control_seeds is not None:  # the chunk's share of the base's control seeds
            end = base.first_seed + base.control_seeds
            overrides["control_seeds"] = max(0, min(len(seeds), end - seeds.start))
        if base.fixed_thresholds() is None:
            overrides["calibration_rank"] = base.middle_rank()
        cfg = dataclasses.replace(
            self.base,
            ranks=(int(cell["rank"]),),
            n_seeds=len(seeds),
            first_seed=seeds.start,
            **overrides,
        )
        ds = lora.run(cfg).squeeze("rank", drop=True)
        return ds[_kept(self.keep)] if self.keep else ds


def _kept(keep: tuple[str, ...]) -> list[str]:
    """The variables to store: ``keep``, plus ``diverged`` when outcomes are kept."""
    extra = ["diverged"] if {"a", "b"} & set(keep) and "diverged" not in keep else []
    return [*keep, *extra]
