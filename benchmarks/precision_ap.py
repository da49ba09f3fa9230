"""Val mask AP of one trained model under each backend / precision / knob (the accuracy cost of speed).

    .venv/bin/python benchmarks/precision_ap.py --model runs/shapes_small --data outputs/shapes/val

Prints one Markdown row per setting: mask AP, box AP, change from the eager fp32 reference, and the
share of the reference's instances matched (same class, mask IoU >= 0.9) over the whole val set.
"""

from __future__ import annotations

import argparse
import time

from masklab.bench import build_case, match_instances, parse_case
from masklab.data.coco import CocoGroundTruth
from masklab.evaluation.evaluator import evaluate_instances, model_class_names, predict_dataset
from masklab.settings import InferenceSettings

#: ``masklab bench`` case strings (backend:precision:knobs); the first is the reference
CASES = [
    "torch",
    "torch-fast",
    "openvino",
    "torch-fast:bf16",
    "openvino:bf16",
    "torch::proposals=100",
    "torch::min_size=96,max_size=96",
    "torch::max_detections=20",
    "openvino:bf16:min_size=96,max_size=96,proposals=100",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="dataset folder or COCO JSON")
    ap.add_argument("--score-thresh", type=float, default=0.05)
    args = ap.parse_args()
    gt = CocoGroundTruth.load(args.data)
    ref_preds, ref_ap = None, None
    print("| backend | precision | knobs | mask AP | box AP | Δ mask AP (points) | matched | s/img |")
    print("|---|---|---|---|---|---|---|---|")
    base = InferenceSettings(model=args.model, device="cpu", score_thresh=args.score_thresh)
    for text in CASES:
        case = parse_case(text, base=base)
        seg = build_case(case)
        t0 = time.perf_counter()
        preds = predict_dataset(gt, seg, progress=False).predictions
        per_img = (time.perf_counter() - t0) / max(len(preds), 1)
        res = evaluate_instances(gt, preds, model_classes=model_class_names(seg))
        mask_ap, box_ap = res.segm.stats["AP"], res.bbox.stats["AP"]
        if ref_preds is None:
            ref_preds, ref_ap = preds, mask_ap
            matched = "ref"
        else:
            stats = [match_instances(ref_preds[i], preds[i]) for i in ref_preds]
            n = sum(s["n_ref"] for s in stats)
            matched = f"{100 * sum(s['matched'] for s in stats) / max(n, 1):.1f}%"
        knob = text.split(":", 2)[2] if text.count(":") == 2 else "-"  # the case's own knobs
        print(f"| {case.backend} | {case.precision} | {knob} | {100 * mask_ap:.2f} | {100 * box_ap:.2f} | "
              f"{100 * (mask_ap - ref_ap):+.2f} | {matched} | {per_img:.3f} |", flush=True)


if __name__ == "__main__":
    main()
