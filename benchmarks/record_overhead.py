"""Overhead of ``gradcomp.record`` against a plain training step and two baselines.

For each configuration and T tasks, prints the median step time relative to a plain step
(forward + backward of the summed loss) measured in the same run (every method runs on copies of
its own of the model, ``--copies`` on the CPU, round-robin in an order rotated every round; a
method's time in a round is the mean over its copies, and the ratio is taken within each round; on
the CPU times are the thread's CPU time, so other processes on a shared machine disturb them
little), for:

- ``baseline loop``: one ``torch.autograd.grad`` per task, then ``.grad`` = the weighted sum and the
  Gram of the flattened per-task gradients (LibMTL / Recon style);
- ``baseline batched``: one ``is_grads_batched`` VJP over all parameters (TorchJD's autojac style);
- ``baseline autogram``: TorchJD's ``autogram.Engine`` on the encoder (``batch_dim=None``): the
  Gramian of the task losses' Jacobian (module by module, without the full Jacobian), then one
  ``backward`` of the losses for ``.grad`` (skipped when torchjd is not installed);
- every strategy of ``gradcomp.record`` recording every 1, 4, 16, 64 steps. For every k > 1 the cost
  is amortised: ``(recorded + (k − 1) · unrecorded) / k``, with both medians measured with the
  recorder active (so hook costs on unrecorded steps are included).

Configurations (``--models``): BERT-style encoders on the CPU (transformers ``BertModel``, random
init, no download): ``d64`` (d=64, 2 layers, batch 16 × 32 tokens), ``d256`` (d=256, 4 layers,
16 × 64) and ``d512`` (d=512, 4 layers, 16 × 128); and, when CUDA is available, a BERT-base-sized
encoder (12 layers, d=768, batch 32 × 128 tokens, bf16 autocast). Tasks own disjoint rows of the
batch (so ``"rows"`` applies); every task has its own linear head on the [CLS] vector; the shared
parameters are the encoder's. ``cnn`` (CPU): a shared Conv2d trunk (4 convolutions, 32-64
channels, 32 × 32 inputs, batch 64, one head per task on the pooled features; shared = the
convolutions).
Peak memory: ``torch.cuda.max_memory_allocated`` on the GPU; not measurable on the CPU (torch's
CPU allocator is invisible to ``tracemalloc``).

Run: ``python benchmarks/record_overhead.py [--reps 15] [--tasks 2 4 8] [--models d64 d256]
[--strategies rows auto] [--copies 3] [--cpu-only]``. Prints the 1-minute load average beside each
table and writes the rounded ratios, the command, the machine and the load to ``--summary``
(default ``benchmarks/summaries/record_overhead.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import gradcomp
from gradcomp import summary as gsummary

EVERY = (1, 4, 16, 64)
STRATEGIES = ("auto", "loop", "batched", "features", "rows")
#: CPU models: name -> (hidden size, layers, attention heads, intermediate size, batch, tokens)
MODELS = {
    "d64": (64, 2, 4, 128, 16, 32),
    "d256": (256, 4, 4, 1024, 16, 64),
    "d512": (512, 4, 8, 2048, 16, 128),
}
#: CPU CNNs: name -> (conv channels, the stride-2 layer, image side, batch)
CNNS = {"cnn": ((32, 32, 64, 64), 2, 32, 64)}
SUMMARY = Path(__file__).parent / "summaries" / "record_overhead.json"


def build_cnn(device: str, model: str, n_tasks: int) -> dict[str, Any]:
    torch.manual_seed(0)
    channels, strided, side, batch = CNNS[model]
    layers: list[nn.Module] = []
    c_in = 3
    for i, c in enumerate(channels):
        stride = 2 if i == strided else 1
        layers += [nn.Conv2d(c_in, c, 3, stride=stride, padding=1), nn.ReLU()]
        c_in = c
    trunk = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten()).to(device)
    tasks = [f"t{i}" for i in range(n_tasks)]
    heads = nn.ModuleDict({t: nn.Linear(c_in, 1) for t in tasks}).to(device)
    x = torch.randn(batch, 3, side, side, device=device)
    y = torch.randn(batch, device=device)
    per = batch // n_tasks
    rows = {t: slice(per * i, per * (i + 1)) for i, t in enumerate(tasks)}

    def forward() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        h = trunk(x)
        losses = {t: (heads[t](h[r]).squeeze(-1) - y[r]).pow(2).mean() for t, r in rows.items()}
        return losses, h

    return {
        "model": nn.ModuleDict({"trunk": trunk, "heads": heads}), "tasks": tasks,
        "forward": forward, "rows": rows, "shared": list(trunk.parameters()), "trunk": trunk,
    }  # fmt: skip


def build(device: str, model: str, n_tasks: int) -> dict[str, Any]:
    if model in CNNS:
        return build_cnn(device, model, n_tasks)
    import transformers

    torch.manual_seed(0)
    big = model == "bert-base"
    if big:
        cfg = transformers.BertConfig(attn_implementation="eager")
        batch, seq = 32, 128
    else:
        d, layers, heads, inner, batch, seq = MODELS[model]
        cfg = transformers.BertConfig(
            vocab_size=1000, hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
            intermediate_size=inner, max_position_embeddings=seq, attn_implementation="eager",
        )  # fmt: skip
    cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = 0.0
    bert = transformers.BertModel(cfg, add_pooling_layer=False).to(device)
    tasks = [f"t{i}" for i in range(n_tasks)]
    heads = nn.ModuleDict({t: nn.Linear(cfg.hidden_size, 1) for t in tasks}).to(device)
    model = nn.ModuleDict({"bert": bert, "heads": heads})
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), device=device)
    y = torch.randn(batch, device=device)
    per = batch // n_tasks
    rows = {t: slice(per * i, per * (i + 1)) for i, t in enumerate(tasks)}

    def amp() -> contextlib.AbstractContextManager[Any]:
        return torch.autocast("cuda", dtype=torch.bfloat16) if big else contextlib.nullcontext()

    def forward() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        with amp():
            h = bert(input_ids=ids).last_hidden_state
            cls = h[:, 0]
            losses = {
                t: (heads[t](cls[r]).squeeze(-1).float() - y[r]).pow(2).mean()
                for t, r in rows.items()
            }
        return losses, h

    # shared = the encoder layers (embeddings train but are not recorded: BERT's position
    # embeddings are broadcast over the batch, which "rows" cannot split)
    shared = [p for p in bert.encoder.parameters() if p.requires_grad]
    return {
        "model": model, "tasks": tasks, "forward": forward, "rows": rows, "shared": shared,
        "trunk": bert.encoder,
    }  # fmt: skip


def peak(fn: Callable[[], Any], device: str) -> float:
    if device != "cuda":
        return float("nan")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


def make_plain(b: dict[str, Any]) -> Callable[[], None]:
    model, fwd = b["model"], b["forward"]

    def plain() -> None:
        model.zero_grad(set_to_none=True)
        losses, _ = fwd()
        sum(losses.values()).backward()

    return plain


def _where(b: dict[str, Any]) -> tuple[list[torch.Tensor], list[int]]:
    params = [p for p in b["model"].parameters() if p.requires_grad]
    ids = {id(p) for p in b["shared"]}
    return params, [k for k, p in enumerate(params) if id(p) in ids]


def make_base_loop(b: dict[str, Any]) -> Callable[[], None]:
    """LibMTL / Recon style: one autograd.grad per task, sum into .grad, Gram of the flat grads."""
    model, fwd = b["model"], b["forward"]
    params, where = _where(b)

    def base_loop() -> None:
        model.zero_grad(set_to_none=True)
        losses, _ = fwd()
        ls = list(losses.values())
        per = [
            torch.autograd.grad(loss, params, retain_graph=i < len(ls) - 1, allow_unused=True)
            for i, loss in enumerate(ls)
        ]
        for k, p in enumerate(params):
            p.grad = torch.stack([g[k] for g in per if g[k] is not None]).sum(0)
        flat = torch.stack([torch.cat([g[k].float().reshape(-1) for k in where]) for g in per])
        (flat @ flat.T).cpu()

    return base_loop


def make_base_batched(b: dict[str, Any]) -> Callable[[], None]:
    """TorchJD style: one is_grads_batched VJP over all parameters."""
    model, fwd = b["model"], b["forward"]
    params, where = _where(b)

    def base_batched() -> None:
        model.zero_grad(set_to_none=True)
        losses, _ = fwd()
        stacked = torch.stack(list(losses.values()))
        eye = torch.eye(len(losses), device=stacked.device)
        jac = torch.autograd.grad(
            stacked, params, grad_outputs=eye, is_grads_batched=True, allow_unused=True
        )
        for p, j in zip(params, jac, strict=True):
            if j is not None:
                p.grad = j.sum(0)
        flat = torch.cat([jac[k].float().reshape(len(losses), -1) for k in where], 1)
        (flat @ flat.T).cpu()

    return base_batched


def make_base_autogram(b: dict[str, Any]) -> Callable[[], None] | None:
    """TorchJD's autogram engine on the encoder: Gramian of the task losses, then ``.grad``."""
    try:
        from torchjd.autogram import Engine
    except ImportError:
        return None
    model, fwd = b["model"], b["forward"]
    engine = Engine(b["trunk"], batch_dim=None)

    def base_autogram() -> None:
        model.zero_grad(set_to_none=True)
        losses, _ = fwd()
        stacked = torch.stack(list(losses.values()))
        gram = engine.compute_gramian(stacked)
        stacked.backward(torch.ones_like(stacked))
        gram.cpu()

    return base_autogram


def make_recorded(
    b: dict[str, Any], strategy: str, every: int, stack: contextlib.ExitStack
) -> Callable[[], None]:
    model, fwd = b["model"], b["forward"]
    kw = {"strategy": strategy, "every": every, "shared": b["trunk"]}
    rec = stack.enter_context(gradcomp.record(model, b["tasks"], **kw))
    counter = [0]

    def step() -> None:
        model.zero_grad(set_to_none=True)
        losses, h = fwd()
        counter[0] += 1  # steps from 1: every=10**9 never records, every=1 always does
        rec.backward(losses, step=counter[0], features=h, rows=b["rows"])

    return step


def time_round(
    methods: dict[str, list[Callable[[], None]]],
    order: list[str],
    clock: Callable[[], float] = time.thread_time,
    sync: Callable[[], None] = lambda: None,
) -> dict[str, float]:
    """One round: every method in ``order``, each of its copies once; its mean time."""
    times = {}
    for name in order:
        total = 0.0
        for fn in methods[name]:
            sync()
            t0 = clock()
            fn()
            sync()
            total += clock() - t0
        times[name] = total / len(methods[name])
    return times


def run_config(
    device: str,
    model: str,
    n_tasks: int,
    reps: int,
    strategies: tuple[str, ...] = STRATEGIES,
    baselines: bool = True,
    copies: int = 1,
) -> list[tuple[str, float, float]]:
    """Every method on ``copies`` copies of its own of the model (same weights), timed
    round-robin so that load changes hit all methods alike; a method's time in a round is the mean
    over its copies (two copies of one model can differ by several per cent: where their
    parameters and activations fall in memory), ratios are taken within each round, then the
    median."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    # CPU: the CPU time of this thread (one intra-op thread; the autograd engine runs CPU work on
    # the calling thread), robust to other processes on a shared machine. GPU: wall clock.
    clock = time.perf_counter if device == "cuda" else time.thread_time

    def each(make: Callable[[dict[str, Any]], Any]) -> list[Any]:
        return [make(build(device, model, n_tasks)) for _ in range(copies)]

    with contextlib.ExitStack() as stack:
        methods = {"plain": each(make_plain)}
        if baselines:
            methods["baseline loop"] = each(make_base_loop)
            methods["baseline batched"] = each(make_base_batched)
            autogram = each(make_base_autogram)
            if all(f is not None for f in autogram):
                methods["baseline autogram"] = autogram
        for strategy in strategies:
            for every, tag in ((1, "rec"), (10**9, "skip")):
                methods[f"{strategy}/{tag}"] = each(
                    lambda b, s=strategy, e=every: make_recorded(b, s, e, stack)
                )
        ratios: dict[str, list[float]] = {m: [] for m in methods}
        plain_s = []
        names = list(methods)
        for r in range(reps + 2):
            shift = r % len(names)  # rotate the order: no method always runs first or last
            times = time_round(methods, names[shift:] + names[:shift], clock, sync)
            if r >= 2:  # warm-up rounds
                plain_s.append(times["plain"])
                for name in methods:
                    ratios[name].append(times[name] / times["plain"])
        med = {m: statistics.median(v) for m, v in ratios.items()}
        mem = {m: peak(fns[0], device) for m, fns in methods.items()}
    out = [("plain", statistics.median(plain_s), mem["plain"])]
    out += [(m, med[m], mem[m]) for m in methods if m.startswith("baseline")]
    for strategy in strategies:
        rec, skip = med[f"{strategy}/rec"], med[f"{strategy}/skip"]
        for every in EVERY:
            ratio = (rec + (every - 1) * skip) / every
            out.append(
                (
                    f"{strategy} every {every}",
                    ratio,
                    mem[f"{strategy}/rec"] if every == 1 else float("nan"),
                )
            )
    return out


def merged(old: dict[str, Any] | None, new: dict[str, Any], tasks: list[int]) -> dict[str, Any]:
    """A model's entry after a run of some of its methods (``--strategies``, ``--no-baselines``)
    at the task counts of the entry before: the methods this run did not time keep their ratios,
    and ``earlier`` names the command that timed each of them; otherwise the new entry alone."""
    if not old or set(map(str, tasks)) != set(old.get("plain_ms", {})):
        return new
    kept = {k: v for k, v in old["ratio"].items() if k not in new["ratio"]}
    if not kept:
        return new
    before = old.get("earlier", {})
    earlier = {k: before.get(k, old["command"]) for k in sorted(kept)}
    return {**new, "ratio": {**kept, **new["ratio"]}, "earlier": earlier}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--tasks", type=int, nargs="+", default=[2, 4, 8])
    names = [*MODELS, *CNNS]
    ap.add_argument("--models", nargs="+", default=names, choices=names)
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    ap.add_argument("--cpu-only", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--summary", type=Path, default=SUMMARY)
    ap.add_argument("--no-baselines", action="store_true", help="skip the three baselines")
    ap.add_argument(
        "--copies", type=int, default=3, help="model copies per method on the CPU (1 on the GPU)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    configs = [("cpu", m) for m in args.models]
    if torch.cuda.is_available() and not args.cpu_only:
        configs.append(("cuda", "bert-base"))
    command = "python benchmarks/record_overhead.py " + " ".join(sys.argv[1:])
    start, load_start = time.perf_counter(), gsummary.load_average()
    summary: dict[str, Any] = {
        "cpu": f"{_cpu_name()}, {os.cpu_count()} CPUs, {platform.system()}",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "clock": "thread CPU time (CPU), wall clock (CUDA)",
        "ratio": "median over rounds of (method time / plain step time in the same round); "
        "a method's time in a round is the mean over its model copies",
        "results": {},
    }
    if args.summary.exists():  # keep the other configurations' results (one entry per model)
        old = json.loads(args.summary.read_text())
        summary["results"] = old.get("values", old).get("results", {})
    baselines = not args.no_baselines
    for device, model in configs:
        name = "BERT-base, bf16 autocast" if device == "cuda" else f"BERT-style {model}, fp32"
        if model in CNNS:
            name = f"CNN {model} (Conv2d trunk), fp32"
        card = torch.cuda.get_device_name() if device == "cuda" else "CPU"
        threads = torch.get_num_threads()
        load0 = os.getloadavg()[0]
        copies = args.copies if device == "cpu" else 1
        results = {
            t: run_config(device, model, t, args.reps, tuple(args.strategies), baselines, copies)
            for t in args.tasks
        }
        load1 = os.getloadavg()[0]
        print(
            f"\n## {name} on {card} ({threads} thread(s), median of {args.reps}; "
            f"1-min load average {load0:.1f} before, {load1:.1f} after)\n"
        )
        labels = [r[0] for r in results[args.tasks[0]]]
        head = " | ".join(f"T={t} ×plain (peak GiB)" for t in args.tasks)
        print(f"| method | {head} |")
        print("|---|" + "---|" * len(args.tasks))
        for i, label in enumerate(labels):
            cells = []
            for t in args.tasks:
                _, value, mem = results[t][i]
                extra = "" if mem != mem else f" ({mem:.2f})"
                if i == 0:
                    cells.append(f"1.00× [{value * 1e3:.1f} ms]{extra}")
                else:
                    cells.append(f"{value:.2f}×{extra}")
            print(f"| {label} | " + " | ".join(cells) + " |", flush=True)
        entry = {
            "command": command,
            "reps": args.reps,
            "copies": copies,
            "load_1min": [round(load0, 1), round(load1, 1)],
            "plain_ms": {str(t): round(results[t][0][1] * 1e3, 1) for t in args.tasks},
            "ratio": {
                label: {str(t): round(results[t][i][1], 3) for t in args.tasks}
                for i, label in enumerate(labels)
                if i
            },
        }
        summary["results"][f"{device}/{model}"] = merged(
            summary["results"].get(f"{device}/{model}"), entry, args.tasks
        )
    timings = {"wall_s": time.perf_counter() - start}
    gsummary.write(
        args.summary, summary, run_id=gsummary.new_run_id(), timings=timings, load_start=load_start
    )
    print(f"\nsummary: {args.summary}")


if __name__ == "__main__":
    main()
