"""Tiled inference on large images with small objects: whole image vs masklab tiled vs SAHI.

Generates large canvases of small shapes (the shipped demo model's three classes, at the size it was
trained on; many cross tile borders) with COCO ground truth, runs the same model (the shipped
``shapes_small``) three ways, and reports mask AP / AP50 (pycocotools), count error, objects split into
several detections, seconds and peak RSS (each method in its own child process):

- ``whole``: one pass over the whole image (``Segmenter(...)``);
- ``masklab``: ``Segmenter(..., tile=T, tile_overlap=O)`` with the default ``backend="auto"``, after
  ``masklab models --prepare`` (once, in its own process and a cache folder of the benchmark's own, so it
  is always measured; its seconds are reported apart): on a CPU, the prepared OpenVINO model, no torch;
- ``masklab-torch``: the same with ``backend="torch"``: eager torchvision, the runtime SAHI also runs;
- ``sahi``: ``sahi.predict.get_sliced_prediction`` with SAHI's ``TorchVisionDetectionModel`` wrapping the
  same torchvision module, slices of T x T, overlap O, SAHI's default post-processing (GREEDYNMM on IOS 0.5),
  no extra whole-image pass (as masklab's default).

SAHI is a benchmark-only dependency (not in pyproject). It pins ``opencv-python``, which would clash with
masklab's ``opencv-python-headless``; install it without its dependencies::

    pip install --no-deps sahi fire termcolor shapely

Run: ``python benchmarks/tiling.py [--images 2 --size 1536 --shapes 150 --tile 128 --overlap 0.2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEMO = str(Path(__file__).resolve().parents[1] / "masklab" / "assets" / "shapes_small.safetensors")
SCORE_THRESH = 0.05  # low, for AP; counts use COUNT_THRESH
COUNT_THRESH = 0.5


def _predict_masklab(data: dict, images: Path, args, *, tile, backend: str = "auto") -> tuple[list[dict], str]:
    """COCO results and the runtime's name."""
    from masklab import Segmenter

    seg = Segmenter(DEMO, device="cpu", score_thresh=SCORE_THRESH, tile=tile, tile_overlap=args.overlap, backend=backend)
    out = []
    for im in data["images"]:
        inst = seg(str(images / im["file_name"]))
        out += inst.to_coco(im["id"])
    return out, seg.runtime.name


def _predict_sahi(data: dict, images: Path, args) -> list[dict]:
    from sahi.models.torchvision import TorchVisionDetectionModel
    from sahi.predict import get_sliced_prediction

    from masklab import Segmenter
    from masklab.io.images import load_image

    class _Model(TorchVisionDetectionModel):
        """SAHI raises "Invalid segmentation mask" on a detection whose thresholded mask gives no polygon
        (empty, or a line of pixels; SAHI #235); drop those, as masklab's tiler drops empty masks."""

        def perform_inference(self, image, image_size=None):
            super().perform_inference(image, image_size)
            import torch
            from sahi.utils.cv import get_coco_segmentation_from_bool_mask

            for p in self._original_predictions:
                masks = (p["masks"] > self.mask_threshold).cpu().numpy()
                keep = torch.tensor([bool(get_coco_segmentation_from_bool_mask(m)) for m in masks], dtype=torch.bool)
                for k in ("boxes", "scores", "labels", "masks"):
                    p[k] = p[k][keep]

    seg = Segmenter(DEMO, device="cpu", score_thresh=SCORE_THRESH)
    names = {str(i): c for i, c in enumerate(seg.spec.categories) if i > 0}
    model = _Model(model=seg.loaded.module, confidence_threshold=SCORE_THRESH, device="cpu",
                                      category_mapping=names, load_at_init=True)
    out = []
    for im in data["images"]:
        array = load_image(str(images / im["file_name"]), max_pixels=10**9).array
        res = get_sliced_prediction(array, model, slice_height=args.tile, slice_width=args.tile, overlap_height_ratio=args.overlap,
                                    overlap_width_ratio=args.overlap, perform_standard_pred=False, verbose=0)
        for p in res.to_coco_predictions(image_id=im["id"]):
            out.append({k: p[k] for k in ("image_id", "category_id", "bbox", "score", "segmentation")})
    return out


def _child(method: str, gt_path: Path, args) -> None:
    from masklab.inference import configure_threads

    configure_threads()  # as every masklab entry point does (torch's default oversubscribes a shared machine)
    data = json.loads(gt_path.read_text())
    images = gt_path.parent
    t0 = time.perf_counter()
    runtime = "torch"
    if method == "sahi":
        preds = _predict_sahi(data, images, args)
    else:
        tile = None if method == "whole" else args.tile
        preds, runtime = _predict_masklab(data, images, args, tile=tile, backend="torch" if method.endswith("-torch") else "auto")
    seconds = time.perf_counter() - t0
    # this process's own peak (VmHWM); ru_maxrss is inherited across fork+exec and would include the parent's
    peak = int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1]) / 1024
    (gt_path.parent / f"pred-{method}.json").write_text(json.dumps(preds, default=float))  # SAHI: numpy scalars
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak, "runtime": runtime,
                      "torch_imported": "torch" in sys.modules}))


def _score(gt_path: Path, pred_path: Path) -> dict:
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO(str(gt_path))
    preds = json.loads(pred_path.read_text())
    ap = ap50 = 0.0
    if preds:
        ev = COCOeval(gt, gt.loadRes(preds), "segm")
        ev.params.maxDets = [1, 10, 1000]  # canvases hold more than COCO's 100 objects
        ev.evaluate(), ev.accumulate()
        prec = ev.eval["precision"][:, :, :, 0, -1]  # (IoU, recall, class), area all, maxDets 1000
        ap = float(prec[prec > -1].mean()) if (prec > -1).any() else 0.0
        ap50 = float(prec[0][prec[0] > -1].mean()) if (prec[0] > -1).any() else 0.0
    kept = [p for p in preds if p["score"] >= COUNT_THRESH]
    n_gt = len(gt.getAnnIds())
    split = 0
    for img_id in gt.getImgIds():
        info = gt.imgs[img_id]
        h, w = info["height"], info["width"]
        mine = [p for p in kept if p["image_id"] == img_id]
        rles = [p["segmentation"] if isinstance(p["segmentation"], dict) else mask_utils.merge(mask_utils.frPyObjects(p["segmentation"], h, w))
                for p in mine]
        areas = mask_utils.area(rles) if rles else np.zeros(0)
        for ann in gt.loadAnns(gt.getAnnIds(imgIds=img_id)):
            g = gt.annToRLE(ann)
            if not rles:
                continue
            inter = np.array([mask_utils.area(mask_utils.merge([g, r], intersect=True)) for r in rles], float)
            # a split object: two or more detections that lie mostly inside it, none covering it
            inside = inter / np.maximum(areas, 1) >= 0.5
            iou = inter / np.maximum(areas + mask_utils.area(g) - inter, 1)
            split += int(inside.sum() >= 2 and not (iou >= 0.5).any())
    return {"mask_ap": ap, "mask_ap50": ap50, "detections": len(kept), "objects": n_gt,
            "count_error": abs(len(kept) - n_gt) / max(n_gt, 1), "split_objects": split}


def _prepare(env: dict) -> float:
    """``masklab models --prepare`` in its own process, as a user does once (the timed run then finds the
    prepared model and imports no torch); its wall seconds."""
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "masklab", "models", "--prepare", DEMO, "--score-thresh", str(SCORE_THRESH)]
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    return time.perf_counter() - t0


def describe_machine() -> str:
    from masklab.hardware import cpu_features

    cpu = cpu_features()
    return f"{cpu.model}, {os.cpu_count()} CPUs, flags: {' '.join(cpu.flags)}; load average {os.getloadavg()[0]:.2f} at the end"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--size", type=int, default=1536, help="canvas side in pixels")
    p.add_argument("--shapes", type=int, default=150, help="shapes per canvas")
    p.add_argument("--tile", type=int, default=128)
    p.add_argument("--overlap", type=float, default=0.2)
    p.add_argument("--methods", default="whole,masklab,masklab-torch,sahi")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--gt", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _child(args.child, Path(args.gt), args)
        return
    from masklab.data.shapes import write_large_shapes

    with tempfile.TemporaryDirectory() as tmp:
        gt = write_large_shapes(Path(tmp) / "set", n=args.images, height=args.size, width=args.size, n_shapes=args.shapes, seed=0)
        rows = []
        for method in args.methods.split(","):
            cmd = [sys.executable, __file__, "--child", method, "--gt", str(gt), "--tile", str(args.tile), "--overlap", str(args.overlap)]
            # a cache folder per method: each conversion is measured, none found from another method's
            env = {**os.environ, "MASKLAB_HOME": str(Path(tmp) / f"home-{method}")}
            prepare_s = _prepare(env) if method in ("whole", "masklab") else 0.0
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(f"{method}: failed\n{proc.stderr[-3000:]}", file=sys.stderr)
                continue
            run = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append({"method": method, **_score(gt, gt.parent / f"pred-{method}.json"), **run, "prepare_s": prepare_s})
    print(f"\n{args.images} canvases of {args.size}x{args.size}, {args.shapes} shapes each; tile {args.tile}, overlap {args.overlap}")
    print(f"machine: {describe_machine()}")
    print("| method | runtime | mask AP | mask AP50 | detections (>=0.5) / objects | count error | split objects | seconds | peak RSS MB | one-time prepare s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        runtime = r["runtime"] + ("" if r["torch_imported"] else ", no torch")
        print(f"| {r['method']} | {runtime} | {r['mask_ap']:.3f} | {r['mask_ap50']:.3f} | {r['detections']} / {r['objects']} | "
              f"{r['count_error']:.3f} | {r['split_objects']} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} | {r['prepare_s']:.1f} |")


if __name__ == "__main__":
    main()
