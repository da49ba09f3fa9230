"""Benchmark: one training step of the ``small`` model on the CPU, torchvision's RoIAlign backward vs
masklab's dense one (``masklab/models/roi_pool.py``). Not a CI test; compare the ratio, measured in one
process, rather than absolute times.

    python benchmarks/train_step.py [--steps 14] [--rounds 2] [--batch-size 4] [--size 128]

Measured on an idle 2-core EPYC (Zen 4), 2026-11-26, batch 4 at 128 px: 0.708 s vs 0.524 s per step (1.35x);
an earlier ad-hoc run of the same comparison on the benchmark set's first 64 images gave 1.42x.
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
    times: dict[str, list[float]] = {"torchvision": [], "dense": []}
    for _ in range(args.rounds):
        for name in times:
            torch.manual_seed(0)
            model = spec.build(num_classes=5, min_size=args.size, max_size=args.size)
            if name == "dense":
                use_fast_roi_pooling(model)
            model.train()
            opt = torch.optim.AdamW(model.parameters(), 1e-3)
            ts = []
            for i in range(args.steps):
                k = (i * args.batch_size) % len(data)
                images, targets = collate(data[k : k + args.batch_size])
                t = time.perf_counter()
                loss = sum(model(list(images), list(targets)).values())
                opt.zero_grad()
                loss.backward()
                opt.step()
                ts.append(time.perf_counter() - t)
            times[name].append(float(np.mean(ts[4:])))
    for name, v in times.items():
        print(f"{name:12s} s/step {np.mean(v):.3f}  (rounds: {', '.join(f'{x:.3f}' for x in v)})")
    print(f"speed-up {np.mean(times['torchvision']) / np.mean(times['dense']):.2f}x  ({threads} threads, "
          f"batch {args.batch_size} at {args.size} px)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
