"""Members × steps per second of the LoRA ensemble paths, measured side by side in one run.

One *member* is one training run (a seed in one setting pair). Every path trains the same members
on the same words with the same schedule on the bundled MiniLM (all 6 layers by default):

- ``loop, all layers``: the per-member loop (``train_loop``), adapters on every layer, full
  forward — the plain path;
- ``vmap, all layers``: the vectorised ensemble (``train_vmap``) of the same model — the path
  before this benchmark's changes;
- ``vmap, last layer``: adapters on the last layer only (``layers=(-1,)``), full forward;
- ``vmap, last layer, cached``: the same model fed the frozen layers' output computed once per
  word (``Batches.hidden``) — the path of the committed CPU run.

The last two train the same model, so their losses and Grams must agree (printed: max |diff|);
ratios are against the loop measured in the same run (timings on a shared machine are noisy).

    python benchmarks/lora_ensemble.py                     # CPU, a few minutes
    python benchmarks/lora_ensemble.py --device cuda --seeds 64 --threads 1

Writes ``benchmarks/summaries/lora_ensemble.json`` (``--no-save`` to skip).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import numpy as np
import torch

from gradcomp import summary
from gradcomp.lora import ensemble as ens
from gradcomp.lora import experiment as ex
from gradcomp.lora.experiment import LoraExperiment
from gradcomp.lora.model import LoraHeads, add_lora, load_encoder, lora_layers
from gradcomp.schedule import linear

SUMMARY = summary.ROOT / "benchmarks" / "summaries" / "lora_ensemble.json"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=4, help="seeds (4 members each)")
    p.add_argument("--loop-seeds", type=int, default=1, help="seeds of the (slow) loop")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--every", type=int, default=5)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--num-layers", type=int, default=None, help="default: all 6")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=6)
    p.add_argument("--per-language", type=int, default=40)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load0, t0 = summary.load_average(), time.perf_counter()
    encoder, tok = load_encoder(num_layers=args.num_layers)
    encoder = encoder.to(device)
    cfg = LoraExperiment(
        n_seeds=args.seeds, steps=args.steps, batch_size=args.batch_size, threshold=0.5,
        per_language=args.per_language, max_length=args.max_length,
    )  # fmt: skip
    words = cfg.words()
    ids, mask = (t.to(device) for t in ex.encode(tok, words.words, cfg.max_length))
    kw = dict(lr=1e-2, schedule=linear(args.every))

    def setup(layers, n_seeds):
        model = LoraHeads(add_lora(encoder, args.rank, layers=layers)).to(device).eval()
        rows = ens.member_rows(range(n_seeds))
        data = ex._prepare(cfg, words, ids, mask, rows)
        return model, {n: v.to(device) for n, v in ens.init_members(model, rows).items()}, data

    def timed(fn):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out, time.perf_counter() - start

    paths: dict[str, tuple[float, int]] = {}  # name -> (seconds, members)
    traces = {}

    def measure(name, fn, members):
        traces[name], sec = timed(fn)
        paths[name] = (sec, members)

    model, init, data = setup(None, args.loop_seeds)
    measure(
        "loop, all layers",
        lambda: ens.train_loop(model, init, data, lora_layers(model), **kw),
        4 * args.loop_seeds,
    )
    model, init, data = setup(None, args.seeds)
    measure(
        "vmap, all layers",
        lambda: ens.train_vmap(model, init, data, lora_layers(model), **kw),
        4 * args.seeds,
    )
    model, init, data = setup((-1,), args.seeds)
    measure(
        "vmap, last layer",
        lambda: ens.train_vmap(model, init, data, lora_layers(model), **kw),
        4 * args.seeds,
    )

    def cached():
        hidden = model.frozen_input(data.ids, data.mask)  # counted: computed once per word
        d = dataclasses.replace(data, hidden=hidden)
        return ens.train_vmap(model, init, d, lora_layers(model), **kw)

    measure("vmap, last layer, cached", cached, 4 * args.seeds)
    full, fast = traces["vmap, last layer"], traces["vmap, last layer, cached"]
    diff = max(
        float(np.abs(full.loss - fast.loss).max()), float(np.abs(full.gram - fast.gram).max())
    )
    steps = args.steps + 1
    rate = {name: members * steps / sec for name, (sec, members) in paths.items()}
    base = rate["loop, all layers"]
    print(
        f"device={device} threads={args.threads} MiniLM layers={encoder.config.num_hidden_layers} "
        f"rank={args.rank} steps={args.steps} batch={args.batch_size} length={args.max_length} "
        f"record every {args.every}; words {len(words.words)}"
    )
    print(f"{'path':<26} {'members':>7} {'seconds':>8} {'members x steps/s':>18} {'vs loop':>8}")
    for name, (sec, members) in paths.items():
        print(f"{name:<26} {members:>7} {sec:8.2f} {rate[name]:18.2f} {rate[name] / base:7.2f}x")
    print(f"max |difference| last layer full vs cached (loss, Gram): {diff:.2e}")
    if not args.no_save:
        summary.write(
            SUMMARY,
            {
                "rate": rate,
                "speedup": {k: v / base for k, v in rate.items()},
                "max_abs_diff_cached": diff,
                "config": vars(args),
            },
            run_id=summary.new_run_id(),
            argv=["benchmarks/lora_ensemble.py", *(sys.argv[1:] if argv is None else argv)],
            timings={"wall_s": time.perf_counter() - t0},
            load_start=load0,
        )
        print(f"wrote {SUMMARY}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
