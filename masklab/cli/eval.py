"""``masklab eval --data val.json (--model M | --predictions results.json) [--out DIR]``: COCO metrics and a report."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

from masklab.cli.options import add_model_arguments
from masklab.settings import LOW_SCORE_THRESH


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="score a model or saved predictions on a COCO-format set",
        description=(
            "Score a model (run over the images) or saved COCO results against COCO ground truth: box and mask "
            "AP (pycocotools), Boundary AP, mask quality vs true IoU, per-class AP, precision-recall curves, a confusion matrix and counting accuracy. "
            "Writes DIR/eval.json, DIR/report.md, DIR/confusion.{json,png}, DIR/pr/*.png, DIR/counts.csv."
        ),
    )
    g = p.add_argument_group("data")
    g.add_argument("--data", required=True, metavar="DATASET",
                   help="ground truth: a COCO JSON (e.g. val.json), or any dataset `masklab train --data` reads "
                   "(a COCO folder, VIA JSON, LabelMe folder, VOC folder, YOLO data.yaml: its val split)")
    g.add_argument("--images", default=None, metavar="DIR",
                   help="folder of the image files (default: relative to the JSON's folder, else its sibling folder named like the JSON)")
    g = p.add_argument_group("what to score (one of --model and --predictions)")
    g.add_argument("--predictions", default=None, metavar="JSON", help="saved COCO results (list of image_id, category_id, score, bbox/segmentation)")
    # --score-thresh defaults low: COCO AP needs the whole precision-recall curve
    add_model_arguments(p, exclude=("classes",), defaults={"score_thresh": LOW_SCORE_THRESH}, title="model (with --model)")
    g = p.add_argument_group("report")
    g.add_argument("--out", "-o", default=None, metavar="DIR", help="output folder (default: a new folder runs/eval-<time>)")
    g.add_argument("--count-thresh", type=float, default=0.5,
                   help="score at or above which a detection counts, for the confusion matrix and counting accuracy (default: 0.5)")
    g.add_argument("--iou-thresh", type=float, default=0.5, help="IoU for a match in the confusion matrix (default: 0.5)")
    g.add_argument("--dilation-ratio", type=float, default=0.02, metavar="F",
                   help="Boundary AP's boundary width as a fraction of the image diagonal (default: 0.02, as the paper)")
    g.add_argument("--no-plots", action="store_true", help="skip the PNG pictures")
    g.add_argument("--diff", action="store_true",
                   help="also draw ground truth vs prediction per image (DIR/diff/<image id>.png: correct, wrong class, "
                   "false positives, missed; at --count-thresh and --iou-thresh), linked from report.md")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def _new_run_dir() -> Path:
    base = Path("runs") / time.strftime("eval-%Y%m%d-%H%M%S")
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def _ground_truth(args):
    """The ground truth ``--data`` names: a COCO JSON as before, else whatever ``open_dataset`` reads (the
    same datasets ``masklab train --data`` takes; a YOLO data.yaml gives its val split, as train's --val)."""
    from masklab.data.coco import CocoGroundTruth

    path = Path(args.data)
    if path.is_file() and path.suffix.lower() == ".json":
        from masklab.data.readers import detect_format
        from masklab.errors import DatasetError

        try:
            return CocoGroundTruth.load(path, images_dir=args.images)
        except DatasetError as e:  # a VIA or LabelMe JSON is not COCO: the dataset readers take it below
            try:
                kind = detect_format(path)
            except DatasetError:
                raise e from None
            if kind == "coco":
                raise
    from masklab.data.dataset import open_dataset

    gt = open_dataset(path, **({"split": "val"} if path.suffix.lower() in (".yaml", ".yml") else {})).gt
    if args.images is not None:
        gt = dataclasses.replace(gt, images_dir=Path(args.images))
    return gt


def run(args) -> int:
    from masklab.errors import DatasetError, UsageError
    from masklab.evaluation import evaluator
    from masklab.evaluation.report import format_table, write_report
    from masklab.io.atomic import atomic_write_json

    if not args.no_plots:
        from masklab.evaluation.plots import require_matplotlib

        require_matplotlib()  # fail before a long model run, not after
    if (args.model is None) == (args.predictions is None):
        raise UsageError("give what to score: either --model (a model to run) or --predictions (saved COCO results)")
    gt = _ground_truth(args)
    out = Path(args.out) if args.out else _new_run_dir()
    settings = {"data": str(args.data), "images": args.images, "count_thresh": args.count_thresh, "iou_thresh": args.iou_thresh}
    failures: list[tuple[int, str]] = []
    if args.predictions is not None:
        try:
            with open(args.predictions, encoding="utf-8") as f:
                results = json.load(f)
        except OSError as e:
            raise UsageError(f"cannot read --predictions {args.predictions}: {e.strerror}") from None
        except json.JSONDecodeError as e:
            raise DatasetError(f"{args.predictions}: not valid JSON ({e})") from None
        settings["predictions"] = str(args.predictions)
        notes: list[str] = []
    else:
        from masklab.inference import Segmenter, configure_threads
        from masklab.settings import InferenceSettings

        configure_threads()
        seg = Segmenter(settings=InferenceSettings.from_args(args))
        classes = evaluator.model_class_names(seg)
        evaluator.match_categories(classes, gt)  # no shared class name: fail before running the model
        run_out = evaluator.predict_dataset(gt, seg, progress=False if args.no_progress else None)
        failures = run_out.failures
        conv = evaluator.instances_to_results(gt, run_out.predictions, model_classes=classes)
        results, notes = conv.results, conv.notes
        atomic_write_json(out / "predictions.json", results)
        settings["model"] = seg.settings()
    if not 0.0 < args.dilation_ratio <= 1.0:
        raise UsageError(f"--dilation-ratio must be in (0, 1], found {args.dilation_ratio}")
    result = evaluator.evaluate_results(gt, results, count_thresh=args.count_thresh, iou_thresh=args.iou_thresh, notes=notes,
                                        dilation_ratio=args.dilation_ratio)
    result.failures = failures
    differences = None
    if args.diff:
        from masklab.evaluation.differences import write_differences

        differences = write_differences(gt, results, out, iou_thresh=args.iou_thresh, score_thresh=args.count_thresh)
        for d in differences:
            if d.error:
                print(f"note: --diff: image {d.image_id} not drawn: {d.error}", file=sys.stderr)
    write_report(result, out, plots=not args.no_plots, settings=settings, differences=differences)
    print(format_table(result))
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    for image_id, err in failures:
        print(f"  failed: image {image_id}: {err}", file=sys.stderr)
    print(f"report: {out / 'report.md'}", file=sys.stderr)
    return 1 if failures else 0
