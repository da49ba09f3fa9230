"""Benchmark: the DEFAULT training command alone, on two generated sets; reports val mask AP50.

Not a CI test. Issue 19's goal: with no flag beyond the budget,

    masklab train --data DIR/train --val DIR/val --out DIR/run --model small --init scratch --time-budget 15m

reaches val mask AP50 >= 0.8 on an idle 2-core machine, on

- ``textured``: ``benchmarks/train_budget.py``'s set (600 + 40 images of 128x128 px; ring (with a hole),
  star, ellipse, bar on noise-and-stripes backgrounds; occlusion; half polygons, half RLE);
- ``plates``: a set of this script's own, unlike it: 3 classes (cross, crescent, hexagon), non-square
  images of 200-260 x 280-340 px, 1-7 objects each of 12-70 px, on blotchy gradient backgrounds with
  a vignette, objects partly cut by the image border (450 + 40 images).

Each set is generated once under ``--out`` (reused by later runs). The script prints each command, its
wall time, the steps made, the settings the run chose (``settings.json``) and the best val AP.
``--busy N`` keeps N extra processes spinning on the CPU during training (``--busy 1`` on 2 cores: a
half-busy machine).

    python benchmarks/train_defaults.py --out runs/bench-defaults [--budget 15m] [--sets textured,plates] [--busy 1]

Smoke run (minutes, tiny sets): ``--budget 1m --n-train 40 --n-val 8``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_budget  # noqa: E402  (the textured set's generator, shared)

PLATE_CLASSES = ("cross", "crescent", "hexagon")


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Blotchy colour gradient + vignette + fine noise (float32 RGB, 0..255)."""
    import cv2

    small = rng.uniform(30, 220, (4, 5, 3)).astype(np.float32)
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot((yy - h / 2) / h, (xx - w / 2) / w)
    img *= (1.0 - 0.6 * r)[..., None]
    img += rng.normal(0, 8, (h, w, 3))
    return np.clip(img, 0, 255)


def _plate_mask(cls: str, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    import cv2

    m = np.zeros((h, w), np.uint8)
    r = int(rng.integers(6, 36))  # objects of ~12-70 px
    cx, cy = int(rng.integers(-r // 2, w + r // 2)), int(rng.integers(-r // 2, h + r // 2))  # may leave the frame
    ang = float(rng.uniform(0, 180))
    if cls == "cross":
        t = max(2, int(r * rng.uniform(0.3, 0.45)))
        for a in (ang, ang + 90):
            rect = ((float(cx), float(cy)), (float(2 * r), float(t)), a)
            cv2.fillPoly(m, [cv2.boxPoints(rect).astype(np.int32).reshape(-1, 1, 2)], 1)
    elif cls == "crescent":
        cv2.circle(m, (cx, cy), r, 1, -1)
        off = r * rng.uniform(0.35, 0.6)
        dx, dy = off * np.cos(np.radians(ang)), off * np.sin(np.radians(ang))
        cv2.circle(m, (int(cx + dx), int(cy + dy)), int(r * 0.85), 0, -1)
    else:
        a = np.radians(ang) + np.arange(6) * np.pi / 3
        pts = np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], 1).astype(np.int32)
        cv2.fillPoly(m, [pts.reshape(-1, 1, 2)], 1)
    return m.astype(bool)


def write_plates(out: Path, *, n: int, seed: int) -> None:
    """The ``plates`` set at ``out`` (COCO: ``annotations.json`` + ``images/``), masks as RLE."""
    from masklab.io.atomic import atomic_save_image, atomic_write_json
    from masklab.structures.masks import encode_rle, masks_to_boxes

    rng = np.random.default_rng(seed)
    images, anns = [], []
    for image_id in range(1, n + 1):
        h, w = int(rng.integers(200, 261)), int(rng.integers(280, 341))
        img = _background(rng, h, w)
        masks, classes = [], []
        for _ in range(int(rng.integers(1, 8))):
            cls = PLATE_CLASSES[int(rng.integers(0, len(PLATE_CLASSES)))]
            m = _plate_mask(cls, rng, h, w)
            if m.sum() < 30:
                continue
            colour = rng.uniform(0, 255, 3).astype(np.float32)
            img[m] = np.clip(colour + rng.normal(0, 12, (int(m.sum()), 3)), 0, 255)
            masks = [old & ~m for old in masks]  # later objects hide earlier ones
            masks.append(m)
            classes.append(cls)
        name = f"images/{image_id:05d}.png"
        atomic_save_image(out / name, img.astype(np.uint8))
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
        for m, cls in zip(masks, classes):
            if m.sum() < 30:
                continue
            x1, y1, x2, y2 = (float(v) for v in masks_to_boxes(m[None])[0])
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": PLATE_CLASSES.index(cls) + 1,
                         "segmentation": encode_rle(m[None])[0], "bbox": [x1, y1, x2 - x1, y2 - y1],
                         "area": float(m.sum()), "iscrowd": 0})
    cats = [{"id": i + 1, "name": c} for i, c in enumerate(PLATE_CLASSES)]
    atomic_write_json(out / "annotations.json", {"images": images, "annotations": anns, "categories": cats})


def _spin(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def _ensure_set(name: str, root: Path, n_train: int, n_val: int) -> None:
    if (root / "train" / "annotations.json").is_file():
        return
    if name == "textured":
        train_budget.write_dataset(root / "train", n=n_train, size=128, seed=0)
        train_budget.write_dataset(root / "val", n=n_val, size=128, seed=1)
    else:
        write_plates(root / "train", n=n_train, seed=10)
        write_plates(root / "val", n=n_val, seed=11)


def run_one(name: str, root: Path, budget: str) -> dict:
    """Train with the default command on one set; returns its numbers."""
    run = root / f"run-{budget}-{time.strftime('%H%M%S')}"
    cmd = ["masklab", "train", "--data", str(root / "train"), "--val", str(root / "val"), "--out", str(run),
           "--model", "small", "--init", "scratch", "--time-budget", budget]
    print(f"[{name}] command: {' '.join(cmd)}", flush=True)
    t0 = time.monotonic()
    rc = subprocess.call([sys.executable, "-m", "masklab", *cmd[1:]])
    wall = time.monotonic() - t0
    card = json.loads((run / "model.json").read_text()) if (run / "model.json").is_file() else {}
    settings = json.loads((run / "settings.json").read_text()) if (run / "settings.json").is_file() else {}
    score = card.get("score") or card.get("metrics") or {}
    choices = settings.get("resolved", {}).get("choices", {})
    out = {"set": name, "rc": rc, "wall_min": round(wall / 60, 1), "steps": (card.get("trained") or {}).get("steps"),
           "mask_ap50": score.get("mask_ap50"), "mask_ap": score.get("mask_ap"), "box_ap50": score.get("box_ap50"),
           "choices": {k: choices.get(k) for k in ("min_size", "max_size", "batch_size", "warmup_steps", "augment", "step_s")}}
    print(f"[{name}] {json.dumps(out)}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench-defaults")
    p.add_argument("--budget", default="15m")
    p.add_argument("--sets", default="textured,plates")
    p.add_argument("--n-train", type=int, default=None, help="training images (default: 600 textured, 450 plates)")
    p.add_argument("--n-val", type=int, default=40)
    p.add_argument("--busy", type=int, default=0, metavar="N", help="extra CPU-spinning processes during training")
    args = p.parse_args(argv)
    results = []
    for name in [s.strip() for s in args.sets.split(",") if s.strip()]:
        if name not in ("textured", "plates"):
            p.error(f"unknown set {name!r}: textured, plates")
        root = Path(args.out) / name
        _ensure_set(name, root, args.n_train or (600 if name == "textured" else 450), args.n_val)
        stop = mp.Event()
        spinners = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(args.busy)]
        for s in spinners:
            s.start()
        try:
            results.append(run_one(name, root, args.budget))
        finally:
            stop.set()
            for s in spinners:
                s.join(5)
    print("\nset       steps  mask AP50  mask AP  box AP50  wall")
    for r in results:
        print(f"{r['set']:<9} {r['steps']!s:>5}  {r['mask_ap50'] or 0:>9.3f}  {r['mask_ap'] or 0:>7.3f}  "
              f"{r['box_ap50'] or 0:>8.3f}  {r['wall_min']} min")
    met = all((r["mask_ap50"] or 0) >= 0.8 for r in results)
    print("goal: val mask AP50 >= 0.8 on every set:", "MET" if met else "NOT MET")
    return 0 if all(r["rc"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
