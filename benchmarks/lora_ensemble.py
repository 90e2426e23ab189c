"""Seeds per second of the vectorised LoRA ensemble against the per-seed loop (same run).

One *seed* is four training runs (the four setting pairs, common random numbers). Both methods
train the same members on the same words with the same schedule, on the bundled MiniLM (optionally
truncated to its first layers); the table gives seeds/second and the speed-up over the loop
measured in this run (timings on a shared machine are noisy: read the ratio). It also checks that
both methods agree (max |difference| of the losses and Grams).

    python benchmarks/lora_ensemble.py                    # CPU, a minute or two
    python benchmarks/lora_ensemble.py --device cuda --seeds 8 32 128 --num-layers 6
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from gradcomp.lora import ensemble as ens
from gradcomp.lora.experiment import LoraExperiment, _prepare
from gradcomp.lora.model import LoraHeads, add_lora, load_encoder, lora_layers
from gradcomp.schedule import linear


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 4])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--every", type=int, default=5)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=6)
    p.add_argument("--per-language", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    encoder, tok = load_encoder(num_layers=args.num_layers)
    model = LoraHeads(add_lora(encoder.to(device), args.rank)).to(device)
    groups = lora_layers(model)
    print(
        f"device={device} threads={args.threads} MiniLM layers={args.num_layers} "
        f"rank={args.rank} steps={args.steps} batch={args.batch_size} "
        f"length={args.max_length} record every {args.every}"
    )
    print(
        f"{'seeds':>5} {'members':>7} {'loop s':>8} {'vmap s':>8} {'loop seeds/s':>13} "
        f"{'vmap seeds/s':>13} {'speed-up':>9} {'max |diff|':>11}"
    )
    for n_seeds in args.seeds:
        cfg = LoraExperiment(
            n_seeds=n_seeds, steps=args.steps, batch_size=args.batch_size,
            per_language=args.per_language, max_length=args.max_length,
        )  # fmt: skip
        data = _prepare(cfg, tok, device)
        table = ens.member_table(n_seeds)
        inits = [ens.init_member(model, int(s)) for s, _, _ in table]
        init = {n: torch.stack([d[n] for d in inits]) for n in inits[0]}
        kw = dict(lr=1e-2, schedule=linear(args.every))
        timings, traces = {}, {}
        for name, fn in (("loop", ens.train_loop), ("vmap", ens.train_vmap)):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            traces[name] = fn(model, init, data, groups, **kw)
            if device.type == "cuda":
                torch.cuda.synchronize()
            timings[name] = time.perf_counter() - t0
        diff = max(
            float(np.abs(traces["loop"].loss - traces["vmap"].loss).max()),
            float(np.abs(traces["loop"].gram - traces["vmap"].gram).max()),
        )
        lo, vm = timings["loop"], timings["vmap"]
        print(
            f"{n_seeds:>5} {4 * n_seeds:>7} {lo:8.2f} {vm:8.2f} {n_seeds / lo:13.3f} "
            f"{n_seeds / vm:13.3f} {lo / vm:8.2f}x {diff:11.2e}"
        )


if __name__ == "__main__":
    main()
