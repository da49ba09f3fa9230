"""Benchmark: one training step of the ``small`` model on the CPU, four ways, alternating in one process:

- ``torchvision``: torchvision's RoIAlign backward (single-threaded on the CPU);
- ``dense``: masklab's dense RoIAlign backward (``masklab/models/roi_pool.py``);
- ``dense+cl``: and the module in channels-last layout (what ``masklab train`` does on every CPU);
- ``dense+cl+bf16``: and bf16 autocast (what it does on a CPU with native bf16; skipped elsewhere).

Not a CI test; compare the ratios, measured in one process, rather than absolute times.

    python benchmarks/train_step.py [--steps 14] [--rounds 2] [--batch-size 4] [--size 128]

Measured on an idle 2-core EPYC (Zen 4), 2026-11-26, batch 4 at 128 px: torchvision 0.708 s vs dense 0.524 s
per step (1.35x). Later figures: README, "Training".
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=14, help="steps per measurement (the first 4 are warm-up)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of both variants")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--size", type=int, default=128)
    args = p.parse_args(argv)

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_budget import write_dataset

    from masklab.data import open_dataset
    from masklab.hardware import cpu_features
    from masklab.inference.threads import configure_threads
    from masklab.models.roi_pool import use_fast_roi_pooling
    from masklab.models.zoo import get_spec
    from masklab.training.data import TorchDataset, collate

    threads = configure_threads()
    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(Path(tmp), n=16 * args.batch_size, size=args.size, seed=0)
        ds = TorchDataset(open_dataset(tmp), False)
        data = [ds[i] for i in range(len(ds))]
    spec = get_spec("small")
    names = ["torchvision", "dense", "dense+cl"] + (["dense+cl+bf16"] if cpu_features().bf16 else [])
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in times:
            torch.manual_seed(0)
            model = spec.build(num_classes=5, min_size=args.size, max_size=args.size)
            if name.startswith("dense"):
                use_fast_roi_pooling(model)
            if "+cl" in name:
                model = model.to(memory_format=torch.channels_last)
            model.train()
            opt = torch.optim.AdamW(model.parameters(), 1e-3)
            ts = []
            for i in range(args.steps):
                k = (i * args.batch_size) % len(data)
                images, targets = collate(data[k : k + args.batch_size])
                t = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name.endswith("bf16")):
                    loss = sum(model(list(images), list(targets)).values())
                opt.zero_grad()
                loss.backward()
                opt.step()
                ts.append(time.perf_counter() - t)
            times[name].append(float(np.mean(ts[4:])))
    base = np.mean(times["torchvision"])
    for name, v in times.items():
        print(f"{name:14s} s/step {np.mean(v):.3f}  {base / np.mean(v):.2f}x  (rounds: {', '.join(f'{x:.3f}' for x in v)})")
    print(f"{threads} threads, batch {args.batch_size} at {args.size} px; {cpu_features().describe()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
