"""Benchmark: mask AP, Boundary AP and how well each mask-quality candidate predicts true mask IoU,
with and without ``--refine guided``, on a trained small model's val set.

Not a CI test. Two sets:

- ``shapes``: the shipped demo model (``masklab/assets/shapes_small``) on freshly generated shapes val
  images (``masklab data shapes``' generator, another seed than its training set);
- ``textured``: the 4-class textured set of ``benchmarks/train_budget.py`` (a ring with a hole, stars,
  occlusion, striped noise backgrounds) with the model that script trains. Training takes its budget
  (20 min on 2 cores), so it is optional: pass ``--textured-run DIR`` (a finished ``train_budget.py
  --out DIR``) or ``--train-textured 20m`` to train one first; without either the set is skipped.

    python benchmarks/mask_quality.py --out runs/bench-quality [--n-val 100] [--textured-run runs/bench-train] [--sweep]
        [--mask-iou-run runs/bench-train-iou]

``--mask-iou-run DIR``: a ``train_budget.py --mask-iou-head --out DIR`` run (the same textured set, the
small model trained with a MaskIoU head, :mod:`masklab.models.mask_iou`). Its set ``textured+head`` has
two rows over the same detections: quality = the head's prediction (``refine`` "none (head)"; the column
``Spearman mask_iou``), and quality = the training-free default on the same model ("none (training-free)"),
so the head and the training-free candidates are compared on one model; the ``textured`` rows give the
model trained without the head (what the head's training did to mask AP).

Per set and refinement: mask AP, Boundary AP (dilation 0.02), both again when scores are rescored by
quality, the Spearman correlation of each candidate (:data:`masklab.structures.quality.QUALITY_CANDIDATES`)
and of the box score, with the true mask IoU over predictions with score >= 0.5, and seconds per image
(model; refinement and output). ``--sweep`` adds a grid of guided-filter radius x eps. Writes
``OUT/mask_quality.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "masklab" / "assets" / "shapes_small.safetensors"


def _detect(seg, gt) -> tuple[dict, float]:
    """``{image id: (image, Detections)}`` (one model pass) and the model's seconds per image."""
    out = {}
    t0 = time.perf_counter()
    for image_id in gt.images:
        array = gt.load_image(image_id).array
        out[image_id] = (array, seg.runtime.predict([array])[0])
    return out, (time.perf_counter() - t0) / max(len(gt.images), 1)


#: Spearman columns besides the training-free candidates: a MaskIoU head's prediction, the box score
EXTRA_COLUMNS = ("mask_iou", "score")


def _row(name: str, seg, gt, dets: dict, refine: dict | None, model_seconds: float, *, head: bool = True) -> dict:
    """Metrics for one refinement setting (None: the plain masks) over the same detections. ``head``
    False: a MaskIoU head's prediction is dropped, so quality is the training-free default."""
    from masklab.evaluation.evaluator import evaluate_instances, instances_to_results, model_class_names
    from masklab.evaluation.mask_quality import spearman, true_ious
    from masklab.inference.refine import refine_masks
    from masklab.structures.quality import QUALITY_CANDIDATES, mask_quality

    preds, cands = {}, {}
    t0 = time.perf_counter()
    for image_id, (array, det) in dets.items():
        head_quality = det.quality
        if not head:
            det = dataclasses.replace(det, quality=None)
        if refine is not None:
            det = dataclasses.replace(det, masks=refine_masks(array, det.mask_probs, det.boxes, **refine))
        inst = seg._to_instances(det, array.shape[:2])
        if len(inst) != len(det.scores):
            raise RuntimeError("benchmark: the segmenter dropped detections (N/A classes); candidates would misalign")
        preds[image_id] = inst
        cands[image_id] = {c: mask_quality(det.mask_probs, method=c) for c in QUALITY_CANDIDATES}
        cands[image_id]["score"] = det.scores
        if head_quality is not None:
            cands[image_id]["mask_iou"] = head_quality
    refine_seconds = (time.perf_counter() - t0) / max(len(dets), 1)
    classes = model_class_names(seg)
    res = evaluate_instances(gt, preds, model_classes=classes)
    label = "none" if refine is None else "guided " + (", ".join(f"{k}={v:g}" for k, v in refine.items()) or "(defaults)")
    if any(d.quality is not None for _, d in dets.values()):
        label += " (head)" if head else " (training-free)"
    row = {"set": name, "refine": label,
           "images": len(gt.images), "model_s_per_image": round(model_seconds, 4), "post_s_per_image": round(refine_seconds, 4),
           "mask_AP": res.segm.stats["AP"], "boundary_AP": res.boundary.stats["AP"],
           "mask_AP_rescored": res.quality.rescored["segm_AP_rescored"],
           "boundary_AP_rescored": res.quality.rescored["boundary_AP_rescored"], "spearman": {}}
    for c in (*QUALITY_CANDIDATES, *EXTRA_COLUMNS):
        if c not in cands[next(iter(cands))]:
            row["spearman"][c] = None
            continue
        withq = {i: dataclasses.replace(inst, quality=cands[i][c]) for i, inst in preds.items()}
        results = instances_to_results(gt, withq, model_classes=classes).results
        iou = true_ious(gt, results)
        q = np.array([r["quality"] for r in results])
        keep = np.array([r["score"] >= 0.5 for r in results], bool)
        row["spearman"][c] = spearman(q[keep], iou[keep])
        row["predictions"] = int(keep.sum())
    return row


def evaluate_set(name: str, model: str, annotations: Path, *, sweep: bool, head_rows: bool = False) -> list[dict]:
    """Rows for one set: plain masks, guided refinement at its defaults, and (``sweep``) a grid; with
    ``head_rows`` (a model with a MaskIoU head) the plain masks with the head's quality and without it."""
    from masklab import Segmenter
    from masklab.data.coco import CocoGroundTruth

    gt = CocoGroundTruth.load(annotations)
    seg = Segmenter(model, device="cpu", score_thresh=0.05)
    dets, seconds = _detect(seg, gt)
    configs = [None, {}] + ([{"radius_cells": r, "eps": e} for r in (1, 2, 3) for e in (1e-4, 1e-3, 1e-2)] if sweep else [])
    rows = []
    runs = [(None, True), (None, False)] if head_rows else [(cfg, True) for cfg in configs]
    for cfg, head in runs:
        rows.append(_row(name, seg, gt, dets, cfg, seconds, head=head))
        print(_table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    return rows


def _shapes_val(out: Path, n: int) -> Path:
    from masklab.data.shapes import write_shapes

    ann = out / "shapes-val" / "annotations.json"
    return ann if ann.is_file() else write_shapes(out / "shapes-val", n=n, seed=20261201)


def _train_run(run: Path, flag: str) -> tuple[str, Path]:
    """``(model, val annotations)`` of a finished ``train_budget.py --out run``."""
    if not (run / "run" / "model.json").is_file() or not (run / "val" / "annotations.json").is_file():
        raise SystemExit(f"{flag} {run}: expected {run}/run/model.json and {run}/val/annotations.json "
                         "(the --out of benchmarks/train_budget.py)")
    return str(run / "run"), run / "val" / "annotations.json"


def _textured(out: Path, args) -> tuple[str, Path] | None:
    run = Path(args.textured_run) if args.textured_run else None
    if run is None and args.train_textured:
        run = out / "textured"
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import train_budget

        train_budget.main(["--out", str(run), "--budget", args.train_textured])
    if run is None:
        return None
    return _train_run(run, "--textured-run")


def _table(rows: list[dict]) -> str:
    from masklab.structures.quality import QUALITY_CANDIDATES

    def f(v):
        return "-" if v is None else f"{v:.3f}"

    head = ("| set | refine | mask AP | Boundary AP | mask AP (x quality) | Boundary AP (x quality) | "
            + " | ".join(f"Spearman {c}" for c in (*QUALITY_CANDIDATES, *EXTRA_COLUMNS)) + " | model s/image | refine s/image |")
    lines = [head, "|---|---|" + "---:|" * (6 + len(QUALITY_CANDIDATES) + len(EXTRA_COLUMNS))]
    for r in rows:
        lines.append(f"| {r['set']} ({r['images']} images) | {r['refine']} | {f(r['mask_AP'])} | {f(r['boundary_AP'])} | "
                     f"{f(r['mask_AP_rescored'])} | {f(r['boundary_AP_rescored'])} | "
                     + " | ".join(f(r["spearman"].get(c)) for c in (*QUALITY_CANDIDATES, *EXTRA_COLUMNS))
                     + f" | {r['model_s_per_image']:.3f} | {r['post_s_per_image']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench-quality")
    p.add_argument("--n-val", type=int, default=100, help="generated shapes val images (default: 100)")
    p.add_argument("--textured-run", default=None, metavar="DIR", help="a finished benchmarks/train_budget.py --out DIR")
    p.add_argument("--train-textured", default=None, metavar="BUDGET", help="train the textured model first (e.g. 20m)")
    p.add_argument("--sweep", action="store_true", help="also a grid of guided-filter radius x eps (9 more rows per set)")
    p.add_argument("--mask-iou-run", default=None, metavar="DIR",
                   help="a finished benchmarks/train_budget.py --mask-iou-head --out DIR: the set textured+head")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sets = [("shapes", str(DEMO), _shapes_val(out, args.n_val))]
    textured = _textured(out, args)
    if textured is not None:
        sets.append(("textured", *textured))
    else:
        print("textured set skipped (pass --textured-run DIR or --train-textured 20m)", file=sys.stderr)
    rows = [row for name, model, ann in sets for row in evaluate_set(name, model, ann, sweep=args.sweep)]
    if args.mask_iou_run:
        model, ann = _train_run(Path(args.mask_iou_run), "--mask-iou-run")
        rows += evaluate_set("textured+head", model, ann, sweep=False, head_rows=True)
    (out / "mask_quality.json").write_text(json.dumps(rows, indent=2))
    print(_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
