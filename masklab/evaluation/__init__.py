"""masklab.evaluation: COCO box/mask metrics (pycocotools), per-class AP, confusion matrix, counting.

    >>> from masklab.data.coco import CocoGroundTruth                                  # doctest: +SKIP
    >>> from masklab.evaluation import evaluate_instances, write_report
    >>> gt = CocoGroundTruth.load("val.json")
    >>> result = evaluate_instances(gt, {image_id: segmenter(gt.image_path(image_id)) for image_id in gt.image_ids})
    >>> result.segm.stats["AP"], result.counts["overall"]["mae"]
    >>> write_report(result, "runs/eval")            # eval.json, report.md, confusion.png, pr/*.png, counts.csv
"""

from masklab.evaluation.coco_metrics import STAT_NAMES, CocoTypeResult
from masklab.evaluation.confusion import ConfusionMatrix, CountTable
from masklab.evaluation.evaluator import (
    EvalResult,
    evaluate_instances,
    evaluate_results,
    match_categories,
    predict_dataset,
)
from masklab.evaluation.report import format_table, write_report

__all__ = [
    "STAT_NAMES",
    "CocoTypeResult",
    "ConfusionMatrix",
    "CountTable",
    "EvalResult",
    "evaluate_instances",
    "evaluate_results",
    "match_categories",
    "predict_dataset",
    "format_table",
    "write_report",
]
