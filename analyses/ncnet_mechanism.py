"""The NCnet mechanism experiment: conflict, oscillation and sensing beside S, across width.

Sample splitting. Two disjoint sets of seeds are trained. The *selection* half (seeds
``seeds .. seeds + selection_seeds - 1``, traced at the last step only) picks the critical width:
the shared width with the largest S at the last step (node ``selection``). Every statistic
reported at that width, and every other node, comes from the *estimation* half (seeds
``0 .. seeds - 1``), which played no part in the choice. The comfortable width is the largest one.

For each width the estimation half is trained with every step traced (``trace_every=1``,
per-unit Grams, held-out patterns) and reduced at once to small summaries, so memory stays
bounded by one width:

* ``traces``: S(step) with its interval, Δ, the CbD margin and, where
  :func:`gradcomp.chsh.estimate` provides them, the margin's interval and test, the signaling
  test and the degenerate / trivial flags; conflict share of the shared layer (Alice's head "A"
  against Bob's head "B") and loss oscillation amplitude (:func:`gradcomp.analyze.conflict`,
  :func:`~gradcomp.analyze.oscillation`), seed means with a normal interval; accuracies.
* ``units``: per-unit competition, units ranked within each run (rank 0 = most contested).
* ``sensing_loss`` / ``sensing_oscillation``: decoding of the remote setting from each head's own
  loss / own oscillation amplitude (:func:`gradcomp.analyze.sensing`), with ``q_value``:
  Benjamini–Hochberg over the family of (head, own setting, window) tests of each width, and
  ``onset_q``: the first window with q < alpha and accuracy above 0.5.
* ``lagged``: r(k) between the per-seed conflict share and the per-seed CHSH contribution s_k
  (seed mean = S), first differences, seeds resampled; ``lead_asymmetry_q`` over the widths.
* ``correlation``: the correlation table (see :func:`_correlations`) with ``pearson_q`` over its
  rows.

Controls at the critical width, on the shared experiment's inputs, held-out patterns, lr and
steps (``NCnetConfig(unshared=True)``, no shared layer, so nothing may be sensed):

* ``control_*``: common random numbers (a seed's four setting pairs share one initialisation).
  A head's trace then cannot depend on the remote setting at all, so decoding is exactly 0.5
  and the A–B conflict exactly 0 *by construction*: a check of the code, not of calibration.
* ``independent_*``: independent initialisations per setting pair (pair p takes its seeds from
  its own block), so the decoder faces seed-level noise that does not depend on the remote
  setting. Accuracy is 0.5 only on average; its p-values show on data whether the decoder and
  its permutation test are calibrated (their share below 0.05 should be about 0.05).
  ``independent_shared_*`` does the same with the shared layer: does sensing survive without
  common random numbers? S there is estimated with ``paired=False``.

Oscillation across learning rates (``lr_sweep``, ``lr_blocks``): at the critical and the
comfortable width, for each lr in ``--lrs``, the estimation half trained with every step
traced; per run the swing amplitude (``osc_amplitude``), the RMS of the linearly detrended
loss per block of ``osc_window`` steps (``osc_detrended``: a wiggle riding on a steep trend
still counts; a sinusoid of amplitude A reads A / √2, or A at the Nyquist frequency), the share
of blocks with at least two reversals, and the Welch high-frequency share (power above half
the Nyquist frequency); their link to sensing (decoding from the own loss, from its swing
amplitude and from its high-passed loss, i.e. the loss minus its centred rolling mean, which
also keeps the trend's curvature, so it is not specific to oscillation) and to S at the last
step. Diverged runs (a non-finite loss) are dropped seed by seed and counted (``diverged``).

Usage::

    python analyses/ncnet_mechanism.py --tiny   # seconds (a test runs it)
    python analyses/ncnet_mechanism.py          # widths 2 3 4 6, 128 + 128 seeds, 600 steps

Defaults (the project's reading): NCnet's default tasks (Alice x1 / x1^x2, Bob x1 / x1^x3) on
k = 4 inputs with 2 of the 16 patterns held out, so that held-out accuracy measures
generalization; full-batch gradient descent, lr 0.5, 600 steps, every step traced.

Writes ``results/ncnet_mechanism.nc`` (netCDF groups: an ``xarray.DataTree``; ``--out`` to
change) and the numbers the README quotes to ``--summary``
(``analyses/summaries/ncnet_mechanism.json``); draw the figures with
``figures/ncnet_mechanism.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from scipy import signal, stats

from gradcomp import chsh, dims, ncnet
from gradcomp import summary as gsummary
from gradcomp.analyze import conflict, correlate, lagged, oscillation, qvalues, sensing
from gradcomp.dims import (
    ALICE,
    ANALYSIS,
    BOB,
    LAG,
    LAYER,
    OWN,
    SEED,
    STEP,
    TASK,
    TASK_J,
    UNIT,
    WIDTH,
)
from gradcomp.provenance import provenance

SHARED = "hidden"  # NCnet's shared layer
CHSH_VARS = (  # taken from chsh.estimate when present (the newer estimate adds the last ones)
    "S",
    "S_lo",
    "S_hi",
    "p_value",
    "s_odd",
    "delta",
    "delta_lo",
    "delta_hi",
    "cbd_margin",
    "cbd_margin_lo",
    "cbd_margin_hi",
    "cbd_p_value",
    "signaling_p_value",
    "S_degenerate",
    "S_trivial",
    "remote_flip_fraction",
)
LABELS = {
    "conflict_share": ("share of setting pairs whose A/B gradients conflict, seed mean", "1"),
    "conflict_share_lo": ("conflict share, lower bound", "1"),
    "conflict_share_hi": ("conflict share, upper bound", "1"),
    "osc_amplitude": ("loss oscillation amplitude (swing), seed mean", "1"),
    "osc_amplitude_lo": ("loss oscillation amplitude, lower bound", "1"),
    "osc_amplitude_hi": ("loss oscillation amplitude, upper bound", "1"),
    "osc_seed_share": ("share of runs whose swing amplitude exceeds 1e-5", "1"),
    "reversal_rate": ("share of turning points of the loss, seed mean", "1"),
    "heldout_acc": ("held-out accuracy, mean over seeds, settings and heads", "1"),
    "train_acc": ("training accuracy, mean over seeds, settings and heads", "1"),
    "unit_conflict_frequency": ("share of steps a unit is pulled apart (ranked units)", "1"),
    "unit_conflict_strength": ("mean negative per-unit cosine (ranked units)", "1"),
    "q_value": ("Benjamini–Hochberg q-value over the family of windows", "1"),
    "onset_q": ("sensing onset: training step of the first window with q < alpha", "1"),
    "pearson_q": ("Benjamini–Hochberg q-value over the correlation table", "1"),
    "lead_asymmetry_p": ("two-sided p-value of the lead asymmetry", "1"),
    "lead_asymmetry_q": ("Benjamini–Hochberg q-value of the lead asymmetry over widths", "1"),
    "r_q": ("Benjamini–Hochberg q-value of r(k) over widths and lags", "1"),
    "osc_detrended": ("RMS of the linearly detrended loss per block, mean", "1"),
    "osc_detrended_lo": ("detrended RMS, lower bound", "1"),
    "osc_detrended_hi": ("detrended RMS, upper bound", "1"),
    "hf_share": ("Welch share of loss power above half the Nyquist frequency, mean", "1"),
    "hf_share_lo": ("high-frequency share, lower bound", "1"),
    "hf_share_hi": ("high-frequency share, upper bound", "1"),
    "reversing_share": ("share of blocks with at least two loss reversals", "1"),
    "diverged": ("seeds dropped for a non-finite loss", "1"),
    "n_seeds": ("seeds used", "1"),
    "sense_mean": ("decoding accuracy of the remote setting, mean over windows", "1"),
    "sense_max": ("decoding accuracy of the remote setting, best window", "1"),
    "sense_significant": ("windows with q < alpha (of head x own x windows)", "1"),
    "sense_windows": ("windows tested (head x own x windows)", "1"),
    "S_selection": ("CHSH S at the last step, selection half of the seeds", "1"),
    "S_selection_lo": ("S, selection half, lower bound", "1"),
    "S_selection_hi": ("S, selection half, upper bound", "1"),
    "share_p_below_alpha": ("share of windows with p < alpha", "1"),
    "lr": ("learning rate", "1"),
    "feature": ("decoded trace", "1"),
    UNIT: ("hidden unit, ranked by competition in its run (0 = most contested)", "1"),
}
FEATURES = ("loss", "osc_amplitude", "loss_highpass")


def per_seed_s(a: xr.DataArray, b: xr.DataArray) -> xr.DataArray:
    """s_k = a11 b11 + a12 b12 + a21 b21 − a22 b22 per seed; its seed mean is S."""
    sign = xr.DataArray([[1, 1], [1, -1]], dims=(ALICE, BOB), coords={ALICE: [1, 2], BOB: [1, 2]})
    return (a.astype(float) * b.astype(float) * sign).sum((ALICE, BOB))


def _mean_ci(per_seed: xr.DataArray, name: str) -> dict[str, xr.DataArray]:
    """Seed mean with mean ± 1.96 standard errors (labels set later, not inherited)."""
    per_seed = per_seed.drop_attrs()
    m = per_seed.mean(SEED)
    se = per_seed.std(SEED, ddof=1) / np.sqrt(per_seed.sizes[SEED])
    return {name: m, f"{name}_lo": m - 1.96 * se, f"{name}_hi": m + 1.96 * se}


def _ranked_units(con: xr.Dataset) -> xr.Dataset:
    """Per-unit competition with units ranked within each run (seed, setting pair)."""
    pair = {LAYER: SHARED, TASK: "A", TASK_J: "B"}
    dims = (SEED, ALICE, BOB, UNIT, STEP)
    freq = con["unit_conflict_frequency"].sel(pair, drop=True).dropna(UNIT, how="all")
    strength = con["unit_conflict_strength"].sel(pair, drop=True).dropna(UNIT, how="all")
    # most contested first: descending mean conflict frequency over training, per run
    order = np.argsort(-freq.mean(STEP).transpose(*dims[:-1]).values, axis=-1, kind="stable")
    out = {}
    for name, da in (("unit_conflict_frequency", freq), ("unit_conflict_strength", strength)):
        ranked = np.take_along_axis(da.transpose(*dims).values, order[..., None], axis=-2)
        out[name] = xr.DataArray(ranked, dims=dims, coords={STEP: da[STEP]}).mean(SEED)
    coords = {ALICE: freq[ALICE].values, BOB: freq[BOB].values, UNIT: np.arange(freq.sizes[UNIT])}
    return xr.Dataset(out).assign_coords(coords)


def _chsh(ds: xr.Dataset, n_boot: int, paired: bool = True) -> xr.Dataset:
    """The CHSH variables that this version of :func:`gradcomp.chsh.estimate` provides."""
    est = chsh.estimate(ds["a"], ds["b"], n_boot=n_boot, paired=paired)
    out = xr.Dataset({k: est[k] for k in CHSH_VARS if k in est})
    for k in ("S_degenerate", "S_trivial"):  # netCDF has no bool
        if k in out:
            out[k] = out[k].astype("int8")
    return out


def _with_q(sense: xr.Dataset, alpha: float) -> xr.Dataset:
    """Add ``q_value`` (BH over head x own x window) and ``onset_q`` to a sensing Dataset."""
    sense["q_value"] = qvalues(sense["p_value"], dims=(TASK, OWN, STEP))
    hit = (sense["q_value"] < alpha) & (sense["accuracy"] > 0.5)
    sense["onset_q"] = sense[STEP][hit.argmax(STEP)].drop_vars(STEP).where(hit.any(STEP))
    return sense


def summarize_width(
    ds: xr.Dataset, args: argparse.Namespace, paired: bool = True
) -> dict[str, xr.Dataset]:
    """All summaries of one width's ensemble (dims without ``width``)."""
    ds = ds.squeeze(WIDTH, drop=True)
    con = conflict(ds, window=args.conflict_window)
    osc = oscillation(ds, window=args.osc_window, spectrum=False)
    inst = con["conflicting"].sel({LAYER: SHARED, TASK: "A", TASK_J: "B"}, drop=True)
    per_seed_conflict = inst.drop_attrs().mean((ALICE, BOB))  # share of the four runs
    amp = osc["osc_amplitude"].drop_attrs()
    traces = xr.Dataset(
        {
            **_chsh(ds, args.n_boot, paired).data_vars,
            **_mean_ci(per_seed_conflict, "conflict_share"),
            **_mean_ci(amp.mean((ALICE, BOB)), "osc_amplitude"),
            "osc_seed_share": (amp > 1e-5).where(amp.notnull()).mean((SEED, ALICE, BOB, TASK)),
            "reversal_rate": osc["reversal_rate"].drop_attrs().mean((SEED, ALICE, BOB)),
            "train_acc": ds["acc"].drop_attrs().mean((SEED, ALICE, BOB, TASK)),
        }
    )
    if "heldout_acc" in ds:
        traces["heldout_acc"] = ds["heldout_acc"].drop_attrs().mean((SEED, ALICE, BOB, TASK))
    kw = {"window": args.sense_window, "n_permutations": args.n_perm, "n_boot": args.n_boot}
    first = args.osc_window - 1  # the oscillation amplitude needs one full window
    sense_osc = sensing(osc.isel({STEP: slice(first, None)}), "osc_amplitude", **kw)
    out = {
        "traces": traces,
        "sensing_loss": _with_q(sensing(ds, "loss", **kw), args.alpha),
        "sensing_oscillation": _with_q(sense_osc, args.alpha),
        "per_seed": xr.Dataset(
            {
                "conflict": per_seed_conflict,
                "s": per_seed_s(ds["a"], ds["b"]),
                **(
                    {"heldout": ds["heldout_acc"].drop_attrs().mean((ALICE, BOB, TASK))}
                    if "heldout_acc" in ds
                    else {}
                ),
            }
        ),
    }
    if "unit_gram" in ds:
        out["units"] = _ranked_units(con)
    return out


def _correlations(
    per_seed: xr.Dataset, traces: xr.Dataset, n_boot: int, alpha: float
) -> xr.Dataset:
    """S against generalization and conflict: the correlation table (dim ``analysis``).

    Rows: the per-seed CHSH contribution s_k against the seed's held-out accuracy at the last
    step (raw over all seeds and widths, with width partialled out, and within each width), S
    against held-out accuracy across widths (one point per width, for contrast), the seed's mean
    conflict share against s_k with width partialled out; and over training (observations
    width x step, width partialled out, serially dependent along step) conflict share against S
    and S against held-out accuracy. Steps where S is trivial (every |C| = 1, flagged by
    ``S_trivial`` where chsh.estimate provides it) are left out of the over-training rows.
    ``pearson_q``: Benjamini–Hochberg over the rows of the table.
    """
    end = per_seed.isel({STEP: -1})
    width = end[WIDTH].broadcast_like(end["s"])
    width.name = WIDTH
    conflict_mean = per_seed["conflict"].mean(STEP)
    s_over = traces["S"]
    if "S_trivial" in traces:
        s_over = s_over.where(traces["S_trivial"] == 0)
    per_width = correlate(end["s"], end["heldout"], SEED, n_boot=n_boot)  # one row per width
    rows = {
        "S~heldout per seed": correlate(end["s"], end["heldout"], (WIDTH, SEED), n_boot=n_boot),
        "S~heldout within width": correlate(
            end["s"], end["heldout"], (WIDTH, SEED), control=width, n_boot=n_boot
        ),
        "S~heldout across widths": correlate(
            traces["S"].isel({STEP: -1}),
            traces["heldout_acc"].isel({STEP: -1}),
            WIDTH,
            n_boot=n_boot,
        ),
        **{
            f"S~heldout at n={int(w)}": per_width.sel({WIDTH: w}, drop=True)
            for w in per_width[WIDTH].values
        },
        "conflict~S within width": correlate(
            conflict_mean, end["s"], (WIDTH, SEED), control=width, n_boot=n_boot
        ),
        "conflict~S over training": correlate(
            traces["conflict_share"],
            s_over,
            (WIDTH, STEP),
            serial=STEP,
            control=traces[WIDTH],
            n_boot=n_boot,
        ),
        "S~heldout over training": correlate(
            s_over,
            traces["heldout_acc"],
            (WIDTH, STEP),
            serial=STEP,
            control=traces[WIDTH],
            n_boot=n_boot,
        ),
    }
    table = xr.concat(
        [r.drop_attrs() for r in rows.values()],
        dim=xr.DataArray(list(rows), dims=ANALYSIS),
    )
    for k in table.data_vars:
        table[k].attrs.update(next(iter(rows.values()))[k].attrs)
    # an undefined r (e.g. a constant s_k at a comfortable width) is no test: its p is NaN
    # (correlate of this version reports 0 there), so it neither counts nor enlarges the family
    table["pearson_p"] = table["pearson_p"].where(np.isfinite(table["pearson"]))
    table["pearson_q"] = qvalues(table["pearson_p"], dims=ANALYSIS)
    table.attrs["alpha"] = alpha
    return table


def _lag_tests(lag: xr.Dataset) -> xr.Dataset:
    """p- and q-values of the lead asymmetry (family: the widths) and of r(k) if provided.

    Uses ``lead_asymmetry_p`` / ``r_p`` when :func:`gradcomp.analyze.lagged` provides them;
    otherwise a normal approximation from the bootstrap interval, z = est / ((hi − lo) / 3.92)
    (``attrs["lead_asymmetry_p_method"]`` says which).
    """
    if "lead_asymmetry_p" in lag:
        lag.attrs["lead_asymmetry_p_method"] = "gradcomp.analyze.lagged"
    else:
        se = (lag["lead_asymmetry_hi"] - lag["lead_asymmetry_lo"]) / (2 * 1.959964)
        z = lag["lead_asymmetry"] / se.where(se > 0)
        lag["lead_asymmetry_p"] = 2 * xr.apply_ufunc(stats.norm.sf, np.abs(z))
        lag.attrs["lead_asymmetry_p_method"] = "normal approximation from the bootstrap interval"
    lag["lead_asymmetry_q"] = qvalues(lag["lead_asymmetry_p"], dims=WIDTH)
    if "r_p" in lag:
        lag["r_q"] = qvalues(lag["r_p"], dims=(WIDTH, LAG))
    return lag


def _drop_diverged(ds: xr.Dataset) -> tuple[xr.Dataset, int]:
    """Drop every seed with a non-finite loss in any run (keeps the seed's quadruple)."""
    if "diverged" in ds:  # the trainers' own flag, where present
        bad = ds["diverged"].astype(bool).any([d for d in ds["diverged"].dims if d != SEED])
    else:
        bad = ~np.isfinite(ds["loss"]).all([d for d in ds["loss"].dims if d != SEED])
    bad = bad.squeeze(drop=True) if WIDTH in bad.dims else bad
    return ds.isel({SEED: np.flatnonzero(~bad.values)}), int(bad.sum())


def independent_run(
    config: ncnet.NCnetConfig, width: int, n: int, first_seed: int, **kw
) -> xr.Dataset:
    """Setting pairs with independent initialisations: pair p uses seeds of its own block.

    ``ncnet.run`` uses common random numbers (seed k's four pairs share one initialisation), so
    this trains 4 n seeds ``first_seed ..`` on all pairs and keeps, for pair p, the p-th block
    of n seeds, relabelled 0..n-1 (a replicate index, not a shared seed).
    """
    seeds = list(range(first_seed, first_seed + 4 * n))
    ds = ncnet.run(config, [width], seeds, progress=False, **kw)
    rows = []
    for i, a in enumerate((1, 2)):
        row = []
        for j, b in enumerate((1, 2)):
            block = slice((2 * i + j) * n, (2 * i + j + 1) * n)
            part = ds.sel({ALICE: [a], BOB: [b]}).isel({SEED: block})
            row.append(part.assign_coords({SEED: np.arange(n)}))
        rows.append(row)
    out = xr.combine_nested(rows, concat_dim=[ALICE, BOB], combine_attrs="override")
    out.attrs["pairing"] = "independent initialisations per setting pair"
    return out


def _blocks(loss: xr.DataArray, window: int) -> xr.Dataset:
    """Per block of ``window`` steps: detrended RMS, reversals >= 2, Welch HF share."""
    n_blocks = loss.sizes[STEP] // window
    v = np.asarray(loss.transpose(..., STEP).values, float)[..., : n_blocks * window]
    v = v.reshape(*v.shape[:-1], n_blocks, window)
    resid = signal.detrend(v, axis=-1, type="linear")
    amp = resid.std(-1)
    d = np.diff(v, axis=-1)
    reversing = ((d[..., :-1] * d[..., 1:] < 0).sum(-1) >= 2).astype(float)
    freqs, psd = signal.welch(v, nperseg=window, detrend="linear", axis=-1)
    pos = psd[..., freqs > 0]
    total = pos.sum(-1)
    high = psd[..., freqs > 0.5 * freqs.max()].sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        hf = np.where(total > 0, high / np.where(total > 0, total, 1), np.nan)
    dims = [d for d in loss.transpose(..., STEP).dims if d != STEP] + [STEP]
    steps = loss[STEP].values[window - 1 : n_blocks * window : window]
    coords = {k: loss[k].values for k in dims if k in loss.coords and k != STEP}
    coords[STEP] = steps
    return xr.Dataset(
        {
            "osc_detrended": (dims, amp),
            "reversing_share": (dims, reversing),
            "hf_share": (dims, hf),
        },
        coords=coords,
    )


def _sense_summary(sense: xr.Dataset) -> dict[str, xr.DataArray]:
    return {
        "sense_mean": sense["accuracy"].mean(),
        "sense_max": sense["accuracy"].max(),
        "sense_significant": (sense["q_value"] < 0.05).sum().astype(float),
        "sense_windows": xr.DataArray(float(sense["p_value"].size)),
    }


def lr_point(base: ncnet.NCnetConfig, lr: float, width: int, seeds, args) -> dict:
    """Oscillation, sensing and S at one (lr, width) on the estimation seeds."""
    cfg = dataclasses.replace(base, lr=lr, units=False)
    ds = ncnet.run(cfg, [width], seeds, progress=False).squeeze(WIDTH, drop=True)
    ds, diverged = _drop_diverged(ds)
    out: dict = {"diverged": float(diverged), "n_seeds": float(ds.sizes[SEED])}
    if ds.sizes[SEED] < 5:  # nothing defined: leave NaN
        return out
    est = _chsh(ds.isel({STEP: -1}), args.n_boot)
    out.update({k: est[k] for k in CHSH_VARS if k in est})
    loss = ds["loss"].drop_attrs()
    osc = oscillation(ds, window=args.osc_window, spectrum=True)
    blocks = _blocks(loss, args.osc_window)
    per_seed = {
        "osc_amplitude": osc["osc_amplitude"].drop_attrs().mean((ALICE, BOB, TASK, STEP)),
        "osc_detrended": blocks["osc_detrended"].mean((ALICE, BOB, TASK, STEP)),
        "hf_share": osc["hf_share"].drop_attrs().mean((ALICE, BOB, TASK)),
    }
    for k, v in per_seed.items():
        out.update(_mean_ci(v, k))
    out["reversing_share"] = blocks["reversing_share"].mean()
    kw = {"window": args.sense_window, "n_permutations": args.n_perm, "n_boot": args.n_boot}
    first = args.osc_window - 1
    smooth = loss.rolling({STEP: args.osc_window}, center=True, min_periods=1).mean()
    traces = {
        "loss": ds,
        "osc_amplitude": osc.isel({STEP: slice(first, None)}),
        "loss_highpass": xr.Dataset({"loss_highpass": loss - smooth}),
    }
    for feature, data in traces.items():
        sense = _with_q(sensing(data, feature, **kw), args.alpha)
        for k, v in _sense_summary(sense).items():
            out[f"{k}:{feature}"] = v
    out["blocks"] = blocks.mean((SEED, ALICE, BOB, TASK))
    return out


def lr_sweep(base: ncnet.NCnetConfig, widths: list[int], seeds, args) -> dict[str, xr.Dataset]:
    """The oscillation verdict per learning rate at the given widths."""
    points = {(lr, w): lr_point(base, lr, w, seeds, args) for lr in args.lrs for w in widths}
    names = sorted({k for p in points.values() for k in p if k != "blocks"})
    rows = {}
    for k in names:
        arr = np.full((len(args.lrs), len(widths)), np.nan)
        for (lr, w), p in points.items():
            if k in p:
                arr[args.lrs.index(lr), widths.index(w)] = float(p[k])
        rows[k] = arr
    coords = {"lr": list(args.lrs), WIDTH: widths}
    plain = {k: v for k, v in rows.items() if ":" not in k}
    sweep = xr.Dataset({k: (("lr", WIDTH), v) for k, v in plain.items()}, coords=coords)
    for stat in ("sense_mean", "sense_max", "sense_significant", "sense_windows"):
        sweep[stat] = xr.DataArray(
            np.stack([rows[f"{stat}:{f}"] for f in FEATURES], -1),
            dims=("lr", WIDTH, "feature"),
            coords={**coords, "feature": list(FEATURES)},
        )
    blocks = [
        xr.concat(
            [points[(lr, w)].get("blocks", xr.Dataset()) for w in widths],
            dim=xr.DataArray(widths, dims=WIDTH),
            join="outer",
        )
        for lr in args.lrs
    ]
    sweep.attrs = {
        "osc_window": args.osc_window,
        "detrended_rms": "std of the linearly detrended loss per block of osc_window steps",
        "hf_share": "Welch (Hann, linear detrend) power above half the Nyquist frequency",
    }
    return {
        "lr_sweep": sweep,
        "lr_blocks": xr.concat(blocks, dim=xr.DataArray(list(args.lrs), dims="lr"), join="outer"),
    }


def _concat_widths(per_width: dict[int, dict[str, xr.Dataset]], widths) -> dict[str, xr.Dataset]:
    tree = {}
    for key in per_width[widths[0]]:
        parts = [per_width[w][key].drop_attrs() for w in widths]
        tree[key] = xr.concat(parts, dim=xr.DataArray(widths, dims=WIDTH, name=WIDTH), join="outer")
        for name, var in per_width[widths[0]][key].variables.items():  # the analyzers' labels
            if name in tree[key].variables:
                tree[key][name].attrs.update(var.attrs)
    return tree


def select_critical(base: ncnet.NCnetConfig, args) -> tuple[int, xr.Dataset]:
    """The critical width from the selection half: argmax of S at the last step."""
    cfg = dataclasses.replace(base, trace_every=(args.steps,), units=False)
    seeds = list(range(args.seeds, args.seeds + args.selection_seeds))
    ds = ncnet.run(cfg, args.widths, seeds, progress=False).isel({STEP: -1})
    est = chsh.estimate(ds["a"], ds["b"], n_boot=args.n_boot)
    sel = xr.Dataset(
        {
            "S_selection": est["S"].drop_attrs(),
            "S_selection_lo": est["S_lo"].drop_attrs(),
            "S_selection_hi": est["S_hi"].drop_attrs(),
        }
    )
    s = sel["S_selection"].values
    critical = int(sel[WIDTH].values[int(np.nanargmax(s))])
    sel.attrs = {"seeds": f"{seeds[0]}..{seeds[-1]}", "rule": "argmax over widths of S"}
    return critical, sel


def run(args: argparse.Namespace) -> xr.DataTree:
    """Select, train every width and the controls, summarise, correlate; return the tree."""
    base = ncnet.NCnetConfig(
        inputs=args.inputs,
        steps=args.steps,
        trace_every=1,
        holdout=args.holdout,
        lr=args.lr,
        units=True,
    )
    seeds = list(range(args.seeds))
    critical, selection = select_critical(base, args)
    comfortable = int(max(args.widths))
    per_width = {}
    for w in args.widths:
        per_width[w] = summarize_width(ncnet.run(base, [w], seeds, progress=False), args)
    tree = _concat_widths(per_width, args.widths)
    # controls: exactly the shared experiment's inputs, held-out patterns, lr and steps
    unshared = dataclasses.replace(base, unshared=True, units=False)
    control = summarize_width(ncnet.run(unshared, [critical], seeds, progress=False), args)
    first = args.seeds + args.selection_seeds  # fresh seeds for the independent controls
    indep = summarize_width(
        independent_run(unshared, critical, args.seeds, first), args, paired=False
    )
    indep_shared = summarize_width(
        independent_run(dataclasses.replace(base, units=False), critical, args.seeds, first),
        args,
        paired=False,
    )
    lag = {  # does the conflict share lead the CHSH contribution?
        w: lagged(
            tree["per_seed"]["conflict"].sel({WIDTH: w}),
            tree["per_seed"]["s"].sel({WIDTH: w}),
            max_lag=args.max_lag,
            n_boot=args.n_boot,
        ).drop_attrs()
        for w in args.widths
    }
    lag_ds = _lag_tests(xr.concat(list(lag.values()), dim=xr.DataArray(args.widths, dims=WIDTH)))
    osc_widths = sorted({critical, comfortable})
    nodes = {
        "selection": selection,
        "traces": tree["traces"],
        "units": tree.get("units", xr.Dataset()),
        "sensing_loss": tree["sensing_loss"],
        "sensing_oscillation": tree["sensing_oscillation"],
        "lagged": lag_ds,
        "correlation": _correlations(tree["per_seed"], tree["traces"], args.n_boot, args.alpha),
        "control_traces": control["traces"],
        "control_sensing_loss": control["sensing_loss"],
        "control_sensing_oscillation": control["sensing_oscillation"],
        "independent_traces": indep["traces"],
        "independent_sensing_loss": indep["sensing_loss"],
        "independent_sensing_oscillation": indep["sensing_oscillation"],
        "independent_shared_traces": indep_shared["traces"],
        "independent_shared_sensing_loss": indep_shared["sensing_loss"],
        **lr_sweep(base, osc_widths, seeds, args),
    }
    attrs = provenance({"analysis": "ncnet_mechanism", **vars(args)})
    attrs.update(
        ncnet_config=str(base.to_dict()),
        critical_width=critical,
        comfortable_width=comfortable,
        critical_rule=(
            "sample splitting: the shared width with the largest S at the last step on the "
            f"selection seeds {args.seeds}..{args.seeds + args.selection_seeds - 1}; every "
            f"statistic comes from the estimation seeds 0..{args.seeds - 1}"
        ),
        selection_seeds=f"{args.seeds}..{args.seeds + args.selection_seeds - 1}",
        estimation_seeds=f"0..{args.seeds - 1}",
        seeds=args.seeds,
        independent_seeds=f"{first}..{first + 4 * args.seeds - 1}",
        multiplicity=(
            "Benjamini-Hochberg q-values: sensing over head x own setting x window per width "
            "(q_value), correlation table over its rows (pearson_q), lead asymmetry over widths "
            "(lead_asymmetry_q)"
        ),
    )
    for name, node in nodes.items():
        _label(node)
        node.attrs = {"node": name, **{k: str(v) for k, v in node.attrs.items()}}
    return xr.DataTree.from_dict({"/": xr.Dataset(attrs=attrs), **nodes})


def _label(node: xr.Dataset) -> None:
    """Set this script's labels (overriding any inherited from the inputs), then defaults."""
    for name in node.variables:
        if name in LABELS:
            node[name].attrs.update(long_name=LABELS[name][0], units=LABELS[name][1])
    dims.annotate(node)


def _f(x, nd: int = 3) -> float | None:
    """``x`` rounded to ``nd`` decimals (None if undefined)."""
    x = float(x)
    return round(x, nd) if np.isfinite(x) else None


def _p(x) -> float | None:
    """A p- or q-value to 3 significant digits, so that a small one does not read as 0."""
    x = float(x)
    return float(f"{x:.3g}") if np.isfinite(x) else None


def _round(key: str, x, nd: int = 3) -> float | None:
    return _p(x) if key.endswith(("p_value", "_p", "_q")) else _f(x, nd)


def summary(tree: xr.DataTree, args: argparse.Namespace) -> dict:
    """Every number the README and docs/analyze.md quote, rounded."""
    crit = int(tree.attrs["critical_width"])
    node = {k: tree[k].to_dataset() for k in tree.children}
    tr = node["traces"].sel({WIDTH: crit}).isel({STEP: -1})
    # every key, null where this version of chsh.estimate does not provide the variable
    at_crit = {k: _round(k, tr[k]) if k in tr else None for k in CHSH_VARS}
    sense = node["sensing_loss"].sel({WIDTH: crit})
    acc = sense["accuracy"]
    first = acc.isel({STEP: 0})
    perfect = acc.where(acc >= 1.0)
    perfect_steps = perfect[STEP].where(perfect.notnull()).values
    per_own = {
        f"own_{int(o)}": {
            "best": _f(acc.sel({OWN: o}).max()),
            "last_window": _f(acc.sel({OWN: o}).isel({STEP: -1}).mean()),
        }
        for o in acc[OWN].values
    }
    finite_steps = perfect_steps[np.isfinite(perfect_steps)]
    sens = {
        "first_window_step": int(acc[STEP].values[0]),
        "first_window_accuracy_min": _f(first.min()),
        "first_window_accuracy_max": _f(first.max()),
        "first_window_lo_min": _f(sense["accuracy_lo"].isel({STEP: 0}).min()),
        "first_window_hi_max": _f(sense["accuracy_hi"].isel({STEP: 0}).max()),
        "perfect_windows": int(np.isfinite(perfect_steps).sum()),
        "perfect_first_step": int(finite_steps.min()) if finite_steps.size else None,
        "perfect_last_step": int(finite_steps.max()) if finite_steps.size else None,
        "perfect_own_settings": sorted(
            {int(o) for o in acc[OWN].values if bool((acc.sel({OWN: o}) >= 1.0).any())}
        ),
        **per_own,
        "windows": int(sense["p_value"].size),
        "significant_q": int((sense["q_value"] < args.alpha).sum()),
        "onset_q_first": _f(sense["onset_q"].min(), 0),
        "onset_bonferroni_first": _f(sense["onset"].min(), 0),
    }
    osc_sense = node["sensing_oscillation"].sel({WIDTH: crit})
    late = {  # the period-2 oscillation some runs develop at the end of training at --lr
        f"n={int(w)}": {
            "share_runs_swinging_last_step": _f(
                node["traces"]["osc_seed_share"].sel({WIDTH: w}).isel({STEP: -1})
            ),
            "swing_amplitude_last_step": _f(
                node["traces"]["osc_amplitude"].sel({WIDTH: w}).isel({STEP: -1}).mean(TASK), 6
            ),
        }
        for w in node["traces"][WIDTH].values
    }
    ctrl = node["control_sensing_loss"]
    ind = node["independent_sensing_loss"]
    ind_osc = node["independent_sensing_oscillation"]
    ind_sh = node["independent_shared_sensing_loss"]
    controls = {
        "crn_unshared_accuracy_min": _f(ctrl["accuracy"].min()),
        "crn_unshared_accuracy_max": _f(ctrl["accuracy"].max()),
        "independent_unshared_accuracy_mean": _f(ind["accuracy"].mean()),
        "independent_unshared_accuracy_min": _f(ind["accuracy"].min()),
        "independent_unshared_accuracy_max": _f(ind["accuracy"].max()),
        "independent_unshared_share_p_below_alpha": _f(
            (
                int((ind["p_value"] < args.alpha).sum())
                + int((ind_osc["p_value"] < args.alpha).sum())
            )
            / (ind["p_value"].size + ind_osc["p_value"].size)
        ),
        "independent_unshared_tests": int(ind["p_value"].size + ind_osc["p_value"].size),
        "independent_unshared_significant_q": int(
            (ind["q_value"] < args.alpha).sum() + (ind_osc["q_value"] < args.alpha).sum()
        ),
        "independent_shared_accuracy_max": _f(ind_sh["accuracy"].max()),
        "independent_shared_accuracy_last_mean": _f(ind_sh["accuracy"].isel({STEP: -1}).mean()),
        "independent_shared_significant_q": int((ind_sh["q_value"] < args.alpha).sum()),
    }
    lag = node["lagged"]
    lags = {
        f"n={int(w)}": {
            k: _round(k, lag[k].sel({WIDTH: w}))
            for k in (
                "lead_asymmetry",
                "lead_asymmetry_lo",
                "lead_asymmetry_hi",
                "lead_asymmetry_p",
                "lead_asymmetry_q",
            )
        }
        for w in lag[WIDTH].values
    }
    corr = node["correlation"]
    cors = {
        str(a): {
            k: _round(k, corr[k].sel({ANALYSIS: a}), 1 if k == "n_eff" else 3)
            for k in ("pearson", "pearson_lo", "pearson_hi", "pearson_p", "pearson_q", "n_eff")
        }
        for a in corr[ANALYSIS].values
    }
    sw = node["lr_sweep"]
    lrs = {}
    for lr in sw["lr"].values:
        for w in sw[WIDTH].values:
            p = sw.sel({"lr": lr, WIDTH: w})
            entry = {
                k: _round(k, p[k], 6 if "osc" in k else 3)
                for k in sw.data_vars
                if "feature" not in p[k].dims
            }
            for f in p["feature"].values:
                for k in ("sense_mean", "sense_max", "sense_significant", "sense_windows"):
                    entry[f"{k}_{f}"] = _f(p[k].sel(feature=f))
            lrs[f"lr={float(lr):g},n={int(w)}"] = entry
    sel = node["selection"]
    return {
        "seeds_estimation": args.seeds,
        "seeds_selection": args.selection_seeds,
        "critical_width": crit,
        "comfortable_width": int(tree.attrs["comfortable_width"]),
        "selection_S_by_width": {
            f"n={int(w)}": [
                _f(sel["S_selection"].sel({WIDTH: w})),
                _f(sel["S_selection_lo"].sel({WIDTH: w})),
                _f(sel["S_selection_hi"].sel({WIDTH: w})),
            ]
            for w in sel[WIDTH].values
        },
        "at_critical_last_step": at_crit,
        "sensing_loss_at_critical": sens,
        "sensing_oscillation_at_critical": {
            "best": _f(osc_sense["accuracy"].max()),
            "significant_q": int((osc_sense["q_value"] < args.alpha).sum()),
            "windows": int(osc_sense["p_value"].size),
        },
        "controls_at_critical": controls,
        "late_oscillation_at_lr": late,
        "lead_asymmetry": lags,
        "correlations": cors,
        "lr_sweep": lrs,
    }


def report(tree: xr.DataTree) -> str:
    """The headline numbers, with intervals, as text."""
    crit = int(tree.attrs["critical_width"])
    sel = tree["selection"].to_dataset()
    lines = [
        f"critical width {crit} (selection seeds {tree.attrs['selection_seeds']}: S = "
        f"{np.round(sel['S_selection'].values, 3).tolist()} at widths "
        f"{sel[WIDTH].values.tolist()}), comfortable width {tree.attrs['comfortable_width']}; "
        f"statistics from seeds {tree.attrs['estimation_seeds']}"
    ]
    tr = tree["traces"].to_dataset().sel({WIDTH: crit}).isel({STEP: -1})
    lines.append(
        "last step: " + ", ".join(f"{k} = {float(tr[k]):.3g}" for k in CHSH_VARS if k in tr)
    )
    for node in (
        "sensing_loss",
        "sensing_oscillation",
        "control_sensing_loss",
        "independent_sensing_loss",
        "independent_shared_sensing_loss",
    ):
        s = tree[node].to_dataset()
        s = s.sel({WIDTH: crit}) if WIDTH in s.dims else s
        first = np.round(s["accuracy"].isel({STEP: 0}).values, 2).ravel().tolist()
        lines.append(
            f"{node}: accuracy first window {first}, best {float(s['accuracy'].max()):.3f}, "
            f"p < 0.05 in {float((s['p_value'] < 0.05).mean()):.2f} of windows, "
            f"q < 0.05 in {int((s['q_value'] < 0.05).sum())} of {s['q_value'].size}"
        )
    lag = tree["lagged"].to_dataset()
    for w in lag[WIDTH].values:
        d = lag.sel({WIDTH: w})
        lines.append(
            f"lead asymmetry n={int(w)}: {float(d['lead_asymmetry']):.3f} "
            f"[{float(d['lead_asymmetry_lo']):.3f}, {float(d['lead_asymmetry_hi']):.3f}], "
            f"p = {float(d['lead_asymmetry_p']):.2g}, q = {float(d['lead_asymmetry_q']):.2g}"
        )
    corr = tree["correlation"].to_dataset()
    for a in corr[ANALYSIS].values:
        r = corr.sel({ANALYSIS: a})
        lines.append(
            f"{a}: r = {float(r['pearson']):.3f} [{float(r['pearson_lo']):.3f}, "
            f"{float(r['pearson_hi']):.3f}], q = {float(r['pearson_q']):.2g}, "
            f"n = {int(r['n'])}, n_eff = {float(r['n_eff']):.1f}"
        )
    sw = tree["lr_sweep"].to_dataset()
    for lr in sw["lr"].values:
        for w in sw[WIDTH].values:
            p = sw.sel({"lr": lr, WIDTH: w})
            lines.append(
                f"lr {float(lr):g} n={int(w)}: S = {float(p['S']):.2f}, detrended RMS = "
                f"{float(p['osc_detrended']):.2e}, hf share = {float(p['hf_share']):.2f}, "
                f"reversing blocks = {float(p['reversing_share']):.2f}, sensing from "
                f"oscillation best {float(p['sense_max'].sel(feature='osc_amplitude')):.2f}, "
                f"high-passed best {float(p['sense_max'].sel(feature='loss_highpass')):.2f}, "
                f"diverged {int(p['diverged'])}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/ncnet_mechanism.nc")
    parser.add_argument("--summary", default="analyses/summaries/ncnet_mechanism.json")
    parser.add_argument("--tiny", action="store_true", help="2 widths, 8 seeds, 60 steps")
    parser.add_argument("--widths", type=int, nargs="+", default=[2, 3, 4, 6])
    parser.add_argument("--seeds", type=int, default=128, help="estimation seeds")
    parser.add_argument("--selection-seeds", type=int, default=128)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.1, 0.5, 2.0, 6.0])
    parser.add_argument("--inputs", type=int, default=4)
    parser.add_argument("--holdout", type=int, default=2)
    parser.add_argument("--conflict-window", type=int, default=10)
    parser.add_argument("--osc-window", type=int, default=20)
    parser.add_argument("--sense-window", type=int, default=30)
    parser.add_argument("--max-lag", type=int, default=20)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--n-boot", type=int, default=999)
    parser.add_argument("--n-perm", type=int, default=999)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.tiny:
        args.widths, args.seeds, args.selection_seeds, args.steps = [2, 3], 8, 8, 60
        args.conflict_window, args.osc_window, args.sense_window = 5, 8, 10
        args.max_lag, args.n_boot, args.n_perm = 3, 99, 199
        args.lrs = [0.5, 6.0]
    start, load_start = time.perf_counter(), gsummary.load_average()
    tree = run(args)
    run_id = gsummary.new_run_id()
    if args.summary:
        tree.attrs.update(gsummary.dataset_attrs(args.summary, run_id))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tree.to_netcdf(args.out, engine="h5netcdf")
    print(report(tree))
    wall = time.perf_counter() - start
    if args.summary:
        values = summary(tree, args)
        timings = {"wall_s": wall}
        gsummary.write(args.summary, values, run_id=run_id, timings=timings, load_start=load_start)
        print(f"wrote {args.summary}")
    print(f"wrote {args.out} in {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
