"""From a LoRA ensemble Dataset to S against rank, conflict, oscillation, sensing and their links.

Per ``(rank, step)``: the CHSH estimate of the outcomes (``gradcomp.chsh.estimate``: S with its
interval, the signaling measure delta and the Contextuality-by-Default margin), the mean A–B cosine
and conflict frequency of the LoRA gradients (``gradcomp.analyze.conflict``, layer ``"all"``), the
loss oscillation amplitude (``gradcomp.analyze.oscillation``) and generalization (mean held-out
accuracy over seeds, settings and heads). Then the correlator (``gradcomp.analyze.correlate``) links
S to each of them over ``(rank, step)``, partialled on rank (x and y centred within each rank) with
``step`` as the serial dim — PAPER.md: S and generalization both move with capacity.

With the separate-adapter control (dim ``adapters``: ``"shared"``, ``"separate"``), the CHSH
variables and ``diverged_share`` are per adapter condition; the mechanism variables and links
describe the shared adapters (the control's heads share no parameter, so there is no conflict).

The project's reading: generalization is held-out accuracy; since the default outcome is read
from held-out accuracy too, S and generalization share their input, so the partial (within-rank)
correlation is the one to quote, and ``outcome_on="train"`` gives the link without that overlap.
"""

from __future__ import annotations

import json
from typing import Any

import xarray as xr

from gradcomp import chsh
from gradcomp._diverged import LABELS as DIVERGED_LABELS
from gradcomp._diverged import MAX_DIVERGED, check_share, diverged_share
from gradcomp.dims import ALICE, ALL, BOB, LAYER, RANK, SEED, STEP, TASK, TASK_J, annotate
from gradcomp.provenance import provenance

__all__ = ["LABELS", "summarize"]

LINKS = ("generalization", "conflict_cosine", "osc_amplitude")
LABELS: dict[str, tuple[str, str]] = {
    "generalization": ("held-out accuracy (mean over seeds, settings, heads)", "1"),
    "generalization_gap": ("training minus held-out accuracy", "1"),
    "conflict_cosine": ("mean cosine between the heads' LoRA gradients", "1"),
    "conflict_frequency": ("share of runs whose heads' LoRA gradients conflict", "1"),
    "osc_amplitude": ("loss oscillation amplitude (mean over runs and heads)", "1"),
    "sensing_accuracy": ("remote-setting decoding accuracy, last window", "1"),
    **{
        f"r_S_{k}{s}": (f"partial correlation of S and {k}{w}", "1")
        for k in LINKS
        for s, w in (("", ""), ("_lo", ", lower bound"), ("_hi", ", upper bound"))
    },
    **{f"rho_S_{k}": (f"partial Spearman correlation of S and {k}", "1") for k in LINKS},
    **{f"n_eff_S_{k}": (f"effective sample size, S and {k}", "1") for k in LINKS},
    **DIVERGED_LABELS,
}
_RUNS = (SEED, ALICE, BOB)
ADAPTERS = "adapters"


def summarize(
    ds: xr.Dataset,
    *,
    window: int | None = None,
    n_boot: int = 999,
    max_diverged: float = MAX_DIVERGED,
) -> xr.Dataset:
    """Summarise a LoRA ensemble (``gradcomp.lora.run``) per rank and step.

    Diverged members (``diverged``; NaN outcomes) are left out of S: a seed with a diverged run
    is dropped from that (rank, step) cell (``n_seeds`` used, ``n_excluded`` left out), and
    ``diverged_share`` is the share of the cell's runs that diverged. Generalization averages
    the members that did not diverge.

    Args:
        ds: the ensemble Dataset (dims ``rank, seed, alice, bob, step``).
        window: window (traced steps) of the conflict, oscillation and sensing analyzers;
            default ``min(10, n_steps)`` (at least 4).
        n_boot: bootstrap resamples of the correlation intervals.
        max_diverged: the largest ``diverged_share`` accepted at the last step, in any rank.

    Raises:
        ValueError: more than ``max_diverged`` of a rank's runs diverged (naming the learning
            rate).

    Returns:
        Dataset over ``(rank, step)`` with the CHSH variables, ``diverged_share``,
        ``n_excluded``, ``generalization``,
        ``generalization_gap``, ``conflict_cosine``, ``conflict_frequency``,
        ``osc_amplitude``, ``sensing_accuracy(rank, task)`` (with 5 seeds or more; otherwise
        ``attrs["sensing"]`` says why it is absent) and the scalar links ``r_S_<name>`` (with
        ``_lo``, ``_hi``), ``rho_S_<name>``, ``n_eff_S_<name>``.
    """
    from gradcomp.analyze import conflict, correlate, oscillation, sensing

    n_steps = ds.sizes[STEP]
    window = window or max(4, min(10, n_steps))
    share = diverged_share(ds["diverged"]) if "diverged" in ds else None
    if share is not None:
        lr = json.loads(ds.attrs.get("config", "{}")).get("lr", float("nan"))
        last = share.isel({STEP: -1}) if STEP in share.dims else share
        for one in (
            [last.sel({ADAPTERS: a}) for a in last[ADAPTERS].values]
            if ADAPTERS in last.dims
            else [last]
        ):
            check_share(one, max_diverged=max_diverged, lr=float(lr), what="lora", cell=RANK)
    out = chsh.estimate(ds["a"], ds["b"], n_boot=n_boot)
    lead = [d for d in (ADAPTERS, RANK, STEP) if d in out.dims]
    out = out.transpose(*lead, ...)
    if share is not None:
        out["diverged_share"] = share
    s_shared = out["S"]
    if ADAPTERS in ds.dims:  # the mechanism: of the shared adapters
        ds = ds.sel({ADAPTERS: "shared"}, drop=True)
        s_shared = out["S"].sel({ADAPTERS: "shared"}, drop=True)
    alive = ~ds["diverged"] if "diverged" in ds else True
    out["generalization"] = ds["heldout_acc"].where(alive).mean((*_RUNS, TASK))
    out["generalization_gap"] = (ds["acc"] - ds["heldout_acc"]).where(alive).mean((*_RUNS, TASK))
    pair = {LAYER: ALL, TASK: "A", TASK_J: "B"}
    conf = conflict(ds, window=min(window, n_steps))
    out["conflict_cosine"] = conf["cosine"].sel(pair, drop=True).mean(_RUNS)
    conflicting = conf["conflicting"].sel(pair, drop=True).astype(float)
    out["conflict_frequency"] = conflicting.mean(_RUNS)
    attrs: dict[str, Any] = {}
    if n_steps >= window:
        osc = oscillation(ds, window=window, spectrum=False)
        out["osc_amplitude"] = osc["osc_amplitude"].mean((*_RUNS, TASK))
    else:
        attrs["oscillation"] = f"skipped: {n_steps} traced steps < window {window}"
    if ds.sizes[SEED] >= 5 and n_steps >= window:
        sens = sensing(ds, window=window, n_boot=n_boot)
        out["sensing_accuracy"] = sens["accuracy"].isel({STEP: -1}, drop=True).mean("own")
    else:
        attrs["sensing"] = f"skipped: needs >= 5 seeds and >= {window} traced steps"
    for name in LINKS:
        if name not in out:
            continue
        c = correlate(
            s_shared, out[name], (RANK, STEP), control=out[RANK], serial=STEP, n_boot=n_boot
        )
        for src, dst in (("pearson", "r"), ("spearman", "rho"), ("n_eff", "n_eff")):
            out[f"{dst}_S_{name}"] = c[src]
        out[f"r_S_{name}_lo"], out[f"r_S_{name}_hi"] = c["pearson_lo"], c["pearson_hi"]
    config = {"window": window, "n_boot": n_boot, "source": ds.attrs.get("config", "")}
    out.attrs = provenance(config)
    out.attrs.update({k: str(v) for k, v in attrs.items()})
    out.attrs["outcome_rule"] = str(ds.attrs.get("outcome_rule", ""))
    out.attrs["tasks"] = str(ds.attrs.get("tasks", ""))
    return annotate(out, LABELS)
