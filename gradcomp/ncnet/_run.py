"""``gradcomp.ncnet.run``: NCnet ensembles as an ``xarray.Dataset``."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from gradcomp import dims
from gradcomp.dims import (
    ALICE,
    ALL_IS,
    BOB,
    SEED,
    SETTINGS,
    STEP,
    TASK,
    WIDTH,
)
from gradcomp.ensemble import chunks
from gradcomp.gram import gram_dataset
from gradcomp.ncnet._autograd import train_autograd
from gradcomp.ncnet._config import NCnetConfig
from gradcomp.ncnet._fast import train_fast
from gradcomp.ncnet._plan import NCnetPlan, plan
from gradcomp.provenance import provenance

__all__ = [
    "ENGINES",
    "HIDDEN",
    "LABELS",
    "TASKS",
    "reject_removed",
    "resolve_engine",
    "run",
    "train",
]

TASKS = ("A", "B")  # heads: Alice's and Bob's
HIDDEN = "hidden"  # NCnet's one shared layer, also layer "all" (attrs[ALL_IS], stored once)

LABELS: dict[str, tuple[str, str]] = {
    "a": ("Alice's outcome (+1: task solved; NaN: diverged)", "1"),
    "b": ("Bob's outcome (+1: task solved; NaN: diverged)", "1"),
    "diverged": ("run diverged (non-finite parameter or loss at or before this step)", "1"),
    "acc": ("training accuracy", "1"),
    "heldout_acc": ("held-out accuracy", "1"),
}

#: NCnet's engines: ``"auto"`` (``"c"`` on the CPU when the kernel builds, else ``"torch"``),
#: ``"c"`` (compiled CPU kernel), ``"torch"`` (hand-derived, all widths fused, any device),
#: ``"vmap"`` and ``"loop"`` (autograd through :mod:`gradcomp.ensemble`)
ENGINES = ("auto", "c", "torch", "vmap", "loop")


def reject_removed(where: str, kwargs: Mapping[str, Any]) -> None:
    """A clear ``TypeError`` for keywords ``where`` does not take (``method``/``backend``: now
    ``engine``)."""
    if not kwargs:
        return
    names = ", ".join(f"{k}=" for k in sorted(kwargs))
    if set(kwargs) <= {"method", "backend"}:
        raise TypeError(
            f"{where}() no longer takes {names}: pass engine= one of {ENGINES} "
            "(method='fast', backend=X is engine=X; method='vmap' or 'loop' is engine='vmap' "
            "or 'loop')"
        )
    raise TypeError(f"{where}() got unexpected keyword argument(s) {names}")


def _seeds(seeds: int | Sequence[int]) -> list[int]:
    if isinstance(seeds, (int, np.integer)):
        if seeds < 2:
            raise ValueError(f"need at least 2 seeds, got {seeds}")
        return list(range(int(seeds)))
    out = [int(s) for s in seeds]
    if len(set(out)) != len(out) or not out:
        raise ValueError("seeds must be a non-empty sequence of distinct integers")
    return out


def _widths(widths: int | Sequence[int]) -> list[int]:
    out = [int(widths)] if isinstance(widths, (int, np.integer)) else [int(w) for w in widths]
    if not out or any(w < 1 for w in out) or len(set(out)) != len(out):
        raise ValueError(f"widths must be distinct positive integers, got {widths!r}")
    return out


def run(
    config: NCnetConfig,
    widths: int | Sequence[int],
    seeds: int | Sequence[int],
    *,
    device: str | torch.device = "cpu",
    chunk: int | None = None,
    progress: bool | str = True,
    engine: str = "auto",
    **removed: Any,
) -> xr.Dataset:
    """Train NCnet for every width × seed × setting pair and return the traces.

    Seed k's runs depend only on (config, width, k): common random numbers across the four
    setting pairs, and the same result whichever other seeds share its call or chunk.

    Args:
        config: the experiment.
        widths: hidden widths (an int or a sequence).
        seeds: a number of seeds (``range(seeds)``) or the seed values.
        device: torch device (``"cpu"``, ``"cuda"``).
        chunk: seeds per vectorised chunk (bounds memory); ``None`` for all at once.
        progress: show a tqdm progress bar (a string: show it with this label). Its time estimate
            appears once 10 % of the steps or the first chunk are done (the first steps include
            warm-up and tracing, and gave estimates many times too long).
        engine: one of :data:`ENGINES`: ``"c"`` (the compiled CPU kernel, built on first use
            with the system C compiler), ``"torch"`` (hand-derived gradients, all widths fused,
            any device), ``"vmap"`` (autograd, :func:`gradcomp.ensemble.train`), ``"loop"`` (one
            run at a time, :func:`gradcomp.ensemble.train_loop`) or ``"auto"`` (``"c"`` on the
            CPU when the kernel builds and loads, else ``"torch"``, with a
            ``CKernelUnavailableWarning`` when a compiler was found but the build failed). The
            engine used is stored in ``attrs["engine"]``.

    Returns:
        Dataset with dims ``width, seed, alice, bob, step`` (+ ``task``, ``layer``, ``task_j``,
        ``unit``): ``a``, ``b`` (±1 float32, NaN for a diverged run), ``diverged`` (bool: a
        parameter or task loss of the run was non-finite at or before this step; parameters are
        checked at the traced steps, which is exact, see :mod:`gradcomp.ncnet._fast`), ``loss``,
        ``acc``, ``heldout_acc`` (with holdout),
        ``gram``, ``grad_norm``, ``cosine`` (layer ``hidden`` only: NCnet's shared parameters are
        exactly the hidden layer, so layer ``"all"`` is the same data, stored once;
        ``attrs["layer_all"] = "hidden"`` says so and :func:`gradcomp.dims.layer` maps ``"all"``
        to it) and ``unit_gram`` (with ``config.units``), labelled, with provenance in ``attrs``.

    Raises:
        TypeError: the removed keywords ``method=`` / ``backend=`` (use ``engine=``).
    """
    reject_removed("ncnet.run", removed)
    widths, seeds = _widths(widths), _seeds(seeds)
    engine = resolve_engine(engine, device, config.torch_dtype)
    if engine == "c":  # build the kernel before the clock starts (and fail before any work)
        from gradcomp.ncnet._compiled import load

        load(config.torch_dtype)
    parts = list(chunks(range(len(seeds)), chunk))
    full = plan(config, widths, seeds)
    fused = engine in ("c", "torch")
    per_chunk = config.steps * (1 if fused else len(widths))
    kind = "unshared" if config.unshared else "shared"
    bar = _Bar(
        total=len(parts) * per_chunk,
        warmup=min(per_chunk, -(-len(parts) * per_chunk // 10)),
        desc=progress
        if isinstance(progress, str)
        else f"ncnet {kind} widths {widths[0]}..{widths[-1]}",
        disable=not progress,
    )
    with bar:
        outs = [
            train(full.select(slice(part[0], part[-1] + 1)), engine, device=device, progress=bar)
            for part in parts
        ]
    traces = {k: np.concatenate([o[k] for o in outs], axis=3) for k in outs[0]}
    ds = _to_dataset(config, widths, seeds, traces)
    ds.attrs["engine"] = engine
    return ds


def train(
    plan: NCnetPlan, engine: str, *, device: str | torch.device = "cpu", progress=None
) -> dict[str, np.ndarray]:
    """The traces of ``plan`` trained by ``engine`` (a resolved engine: not ``"auto"``).

    Returns:
        ``(trace, width, setting, seed, ...)`` arrays, see
        :func:`gradcomp.ncnet._fast.train_fast`.
    """
    if engine in ("c", "torch"):
        return train_fast(plan, device=device, progress=progress, engine=engine)
    if engine in ("vmap", "loop"):
        return train_autograd(plan, engine=engine, device=device, progress=progress)
    raise ValueError(f"engine must be one of {ENGINES[1:]} here, got {engine!r}")


class _Bar(tqdm):
    """A tqdm step bar that shows no time estimate until ``warmup`` steps are done.

    The first updates cover one step each (traced steps are log-spaced) and pay for the first
    trace and warm-up: their rate extrapolated to the whole run read e.g. 54 min for a 40 s run.
    """

    NO_ETA = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}, estimating...]"

    def __init__(self, *, warmup: int, **kw) -> None:
        self.warmup = warmup
        self.estimating = True
        super().__init__(unit="step", leave=False, bar_format=self.NO_ETA, **kw)

    def update(self, n: float | None = 1) -> bool | None:
        if self.estimating and not self.disable and self.n + (n or 0) >= self.warmup:
            self.estimating = False
            self.bar_format = None  # tqdm's default: with the time estimate
        return super().update(n)


def resolve_engine(
    engine: str, device: str | torch.device, dtype: torch.dtype = torch.float32
) -> str:
    """``"auto"`` -> ``"c"`` on the CPU when the C kernel builds and loads, else ``"torch"``.

    With a C compiler present, ``"auto"`` builds and loads the kernel for ``dtype`` here; if that
    fails (e.g. a compiler without OpenMP) it warns once with a
    :class:`~gradcomp.ncnet._compiled.CKernelUnavailableWarning` and takes ``"torch"`` (the same
    results). Any other engine is returned as it is: an explicit ``"c"`` is never replaced (its
    build errors are raised when it runs).

    Raises:
        ValueError: an unknown engine, or ``"c"`` on a device other than the CPU.
    """
    from gradcomp.ncnet._compiled import CKernelUnavailableWarning, available, try_load

    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    on_cpu = torch.device(device).type == "cpu"
    if engine == "c" and not on_cpu:
        raise ValueError("engine='c' runs on the CPU only: use engine='torch' on other devices")
    if engine != "auto":
        return engine
    if not (on_cpu and available()):
        return "torch"
    why = try_load(dtype)
    if why is None:
        return "c"
    warnings.warn(
        f"ncnet engine='auto': the compiled C kernel could not be built or loaded ({why}); "
        "using engine='torch' (same results, slower on the CPU). Pass engine='torch' to "
        "silence this, or fix the compiler ($CC, OpenMP) to use engine='c'",
        CKernelUnavailableWarning,
        stacklevel=3,
    )
    return "torch"


def _to_dataset(config, widths, seeds, tr) -> xr.Dataset:
    steps = config.trace_steps()

    def arrange(a: np.ndarray) -> np.ndarray:
        # (step, width, setting, seed, ...) -> (width, seed, alice, bob, step, ...)
        a = a.reshape(a.shape[0], a.shape[1], 2, 2, *a.shape[3:])
        return np.moveaxis(a, (0, 1, 2, 3, 4), (4, 0, 2, 3, 1))

    base = [WIDTH, SEED, ALICE, BOB, STEP]
    data = {
        "diverged": (base, arrange(tr["diverged"])),
        "a": (base, arrange(tr["outcome"][..., 0])),
        "b": (base, arrange(tr["outcome"][..., 1])),
        "loss": ([*base, TASK], arrange(tr["loss"])),
        "acc": ([*base, TASK], arrange(tr["acc"])),
    }
    if "heldout_acc" in tr:
        data["heldout_acc"] = ([*base, TASK], arrange(tr["heldout_acc"]))
    coords = {WIDTH: widths, SEED: seeds, ALICE: list(SETTINGS), BOB: list(SETTINGS), STEP: steps}
    ds = gram_dataset(
        arrange(tr["gram"])[..., None, :, :],  # (..., layer, task, task_j)
        base,
        coords,
        tasks=TASKS,
        layers=[HIDDEN],
        units=arrange(tr["unit_gram"])[..., None, :, :, :] if "unit_gram" in tr else None,
        data=data,
        labels=LABELS,
    )
    cfg = {**config.to_dict(), "widths": widths, "n_seeds": len(seeds)}
    ds.attrs.update(provenance(cfg))
    ds.attrs["experiment"] = "ncnet"
    ds.attrs["outcome_rule"] = f"+1 when training accuracy >= {config.threshold}"
    ds.attrs["alice_tasks"] = " ; ".join(config.alice)
    ds.attrs["bob_tasks"] = " ; ".join(config.bob)
    ds.attrs["unshared"] = int(config.unshared)
    ds.attrs[ALL_IS] = HIDDEN
    return dims.annotate(ds, LABELS)
