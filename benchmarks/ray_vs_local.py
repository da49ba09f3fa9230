"""Images/s of the local engine and the Ray engine over the same folder, on this machine.

    .venv/bin/python benchmarks/ray_vs_local.py                       # generated folder, random weights
    .venv/bin/python benchmarks/ray_vs_local.py --images 32 --workers 1,2,4 --out bench-ray.json
    .venv/bin/python benchmarks/ray_vs_local.py --folder photos/ --model maskrcnn_resnet50_fpn_v2 --weights w.pth

What is measured (every run writes the same per-image JSON + overlay into its own folder):

- ``local``: ``masklab.runs.run_segment`` in this process, torch using every CPU.
- ``ray wN``: ``run_segment_ray`` with N model actors on one private local Ray (started once; its start
  time is reported apart). Two rates per run: *end to end* (actor start and model load included, what a
  short job sees) and *steady* (after the first result; what a long job converges to).

How throughput scales with workers: each actor holds one model and segments its own batches, so on a
cluster the steady rate is about N x (one actor's rate) until something shared runs out: GPUs (one actor
per GPU), CPU cores (on CPU, N actors x threads each should not exceed the cores), or the storage
bandwidth the images come from. On one machine, N actors split the same cores: N=1 with all threads and
N=cores with one thread each do the same arithmetic, and Ray's per-task overhead and actor start-up are
paid on top, so the local engine is the faster choice for what one machine can do.

Weights: random (seeded) weights by default, since nothing is downloaded here; speed does not depend on
the weight values, only the number of detections does (``--max-detections`` bounds it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def _make_folder(folder: Path, n: int, size_hw: tuple[int, int]) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    h, w = size_hw
    for i in range(n):
        rng = np.random.default_rng(i)
        img = (rng.random((h, w, 3)) * 60 + 90).astype(np.uint8)
        for _ in range(5):
            y, x = int(rng.integers(0, h - 60)), int(rng.integers(0, w - 60))
            img[y : y + int(rng.integers(20, 60)), x : x + int(rng.integers(20, 60))] = rng.integers(0, 255, 3)
        Image.fromarray(img).save(folder / f"img{i:04d}.png")


def _random_weights(model: str, path: Path) -> Path:
    import torch

    from masklab.models.loading import build_module
    from masklab.models.zoo import get_spec

    torch.manual_seed(0)
    torch.save(build_module(get_spec(model)).state_dict(), path)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folder", type=Path, default=None, help="images to segment (default: a generated folder)")
    ap.add_argument("--images", type=int, default=16, help="generated images (default: 16)")
    ap.add_argument("--size", default="240x320", help="generated image size HxW (default: 240x320)")
    ap.add_argument("--model", default="maskrcnn_resnet50_fpn_v2", help="model name (default: maskrcnn_resnet50_fpn_v2)")
    ap.add_argument("--weights", default=None, help="weights file (default: seeded random weights)")
    ap.add_argument("--min-size", type=int, default=320)
    ap.add_argument("--max-size", type=int, default=480)
    ap.add_argument("--max-detections", type=int, default=20)
    ap.add_argument("--workers", default="1,2", help="Ray actor counts to try, comma-separated (default: 1,2)")
    ap.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON here")
    args = ap.parse_args(argv)

    from masklab import Segmenter
    from masklab.inference.threads import configure_threads
    from masklab.io.inputs import expand_inputs
    from masklab.runs import expand_sources, run_segment, run_segment_ray
    from masklab.runs.ray.cluster import ray_session
    from masklab.settings import InferenceSettings

    configure_threads()  # an entry point: the local engine runs on every CPU, as `masklab segment` does

    with tempfile.TemporaryDirectory(prefix="masklab-bench-ray-") as tmp:
        tmp = Path(tmp)
        folder = args.folder
        if folder is None:
            h, w = (int(v) for v in args.size.lower().split("x"))
            folder = tmp / "images"
            _make_folder(folder, args.images, (h, w))
        weights = args.weights or str(_random_weights(args.model, tmp / "weights.pth"))
        settings = InferenceSettings(
            model=args.model,
            weights=os.path.abspath(weights),
            device="cpu",
            score_thresh=0.0,
            min_size=args.min_size,
            max_size=args.max_size,
            max_detections=args.max_detections,
        )
        seg = Segmenter(settings=settings)
        items = expand_inputs([str(folder)])
        cpus = len(os.sched_getaffinity(0))
        print(f"{len(items)} images from {folder}, model {seg.spec.name} at {args.min_size}/{args.max_size} px, {cpus} CPUs", file=sys.stderr)
        rows = []

        seg(str(items[0].path))  # warm-up (first-call allocations), as a Ray actor's first image is

        def run_local(name: str) -> None:
            # Run before and after the Ray runs: on a shared machine the load moves between runs.
            local = run_segment(items, tmp / name, seg, viz="instance", progress=False)
            rate = round(local.processed / local.seconds, 3)
            rows.append({"engine": name, "workers": 1, "threads_each": seg.num_threads, "seconds": round(local.seconds, 2), "images_per_s": rate, "steady_images_per_s": None, "first_result_s": None})
            print(f"{name}: {rate} images/s", file=sys.stderr)

        run_local("local")

        t0 = time.perf_counter()
        with ray_session(num_cpus=cpus):
            ray_start = time.perf_counter() - t0
            print(f"ray start: {ray_start:.1f} s", file=sys.stderr)
            for n in (int(v) for v in args.workers.split(",")):
                out = tmp / f"ray-w{n}"
                summary = run_segment_ray(
                    expand_sources([str(folder)]),
                    out,
                    inference=settings,
                    settings={**seg.settings(), "viz": "instance"},
                    writer_kwargs={"viz": ["instance"]},
                    num_workers=n,
                    progress=False,
                )
                info = json.loads((out / "run.json").read_text())["ray"]
                rows.append(
                    {
                        "engine": "ray",
                        "workers": n,
                        "threads_each": info["threads_each"],
                        "seconds": round(summary.seconds, 2),
                        "images_per_s": round(summary.processed / summary.seconds, 3),
                        "steady_images_per_s": info["steady_images_per_s"],
                        "first_result_s": info["first_result_s"],
                    }
                )
                print(f"ray w{n}: {rows[-1]['images_per_s']} images/s end to end, {info['steady_images_per_s']} steady", file=sys.stderr)
        run_local("local-2")

    print(f"\n{'engine':<8}{'workers':>8}{'threads':>8}{'seconds':>9}{'img/s':>8}{'steady':>8}{'1st (s)':>9}")
    for r in rows:
        steady = "-" if r["steady_images_per_s"] is None else f"{r['steady_images_per_s']:.3f}"
        first = "-" if r["first_result_s"] is None else f"{r['first_result_s']:.1f}"
        print(f"{r['engine']:<8}{r['workers']:>8}{r['threads_each']:>8}{r['seconds']:>9.1f}{r['images_per_s']:>8.3f}{steady:>8}{first:>9}")
    print(f"(ray start, once: {ray_start:.1f} s, not in the rows)")
    if args.out:
        args.out.write_text(json.dumps({"images": len(items), "model": seg.spec.name, "cpus": cpus, "ray_start_s": round(ray_start, 2), "runs": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
