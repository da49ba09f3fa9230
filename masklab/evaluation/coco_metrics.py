"""COCO box and mask metrics: pycocotools' ``COCOeval`` run as is, its numbers read out by name.

Every number is pycocotools' own (no re-implementation): the 12 ``COCOeval.stats`` and, per class, the
same average over ``eval["precision"]`` that ``COCOeval.summarize`` does restricted to that class.
Undefined values (pycocotools' ``-1``: e.g. APl with no large objects) are ``None`` here (JSON ``null``).

``iou_type="boundary"`` is Boundary AP (Cheng et al. 2021, :mod:`masklab.evaluation.boundary`): the same
``COCOeval`` with each detection-ground truth IoU replaced by min(mask IoU, boundary IoU), as the
reference API and ``faster-coco-eval`` do.
"""

from __future__ import annotations

import contextlib
import copy
import io
from dataclasses import dataclass

import numpy as np

__all__ = ["STAT_NAMES", "CocoTypeResult", "run_cocoeval"]

#: Names of ``COCOeval.stats`` in order (AP over IoU 0.50:0.95 unless named; areas small/medium/large).
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@dataclass
class CocoTypeResult:
    """pycocotools' result for one ``iou_type`` (``"bbox"`` or ``"segm"``).

    Attributes:
        stats: ``{name: value}`` for :data:`STAT_NAMES`; fractions in [0, 1], None where pycocotools gives -1.
        per_class: ``{category id: {"AP", "AP50", "AP75"}}``, None where the class has no ground truth.
        precision: float64 (T=10, R=101, K) precision at IoU thresholds 0.50:0.05:0.95 and recall
            0:0.01:1, area "all", 100 detections; -1 where undefined (pycocotools' array, sliced).
        iou_thresholds: float64 (T,); recall_thresholds: float64 (R,); category_ids: list of K ids.
    """

    stats: dict[str, float | None]
    per_class: dict[int, dict[str, float | None]]
    precision: np.ndarray
    iou_thresholds: np.ndarray
    recall_thresholds: np.ndarray
    category_ids: list[int]


def _mean_defined(values: np.ndarray) -> float | None:
    v = values[values > -1]
    return float(np.mean(v)) if v.size else None


def _build_results_api(coco_gt, results: list[dict], iou_type: str):
    """pycocotools ``loadRes`` for ``iou_type``; an empty COCO object for no results (loadRes fails on [])."""
    from pycocotools.coco import COCO

    anns = copy.deepcopy(results)
    # COCO's definition: mask results carry no box (their area is the mask's, as torchvision's and
    # detectron2's evaluators do); box results carry no mask (their area is the box's).
    drop = "bbox" if iou_type == "segm" else "segmentation"
    for a in anns:
        a.pop(drop, None)
    with contextlib.redirect_stdout(io.StringIO()):
        if anns:
            return coco_gt.loadRes(anns)
        dt = COCO()
        dt.dataset = {"images": list(coco_gt.dataset["images"]), "categories": copy.deepcopy(coco_gt.dataset["categories"]), "annotations": []}
        dt.createIndex()
        return dt


def run_cocoeval(coco_gt, results: list[dict], iou_type: str, *, dilation_ratio: float = 0.02) -> CocoTypeResult:
    """Run ``COCOeval(coco_gt, results, iou_type)`` (evaluate, accumulate, summarize) silently.

    Args:
        coco_gt: a ``pycocotools.coco.COCO`` ground truth.
        results: COCO results dicts (``image_id``, ``category_id``, ``score`` and ``bbox`` [x, y, w, h]
            and/or ``segmentation`` RLE), already checked against the ground truth; may be empty.
        iou_type: ``"bbox"``, ``"segm"`` or ``"boundary"``.
        dilation_ratio: boundary width as a fraction of the image diagonal (``"boundary"`` only).
    """
    from pycocotools.cocoeval import COCOeval

    coco_dt = _build_results_api(coco_gt, results, "segm" if iou_type == "boundary" else iou_type)
    if iou_type == "boundary":
        from masklab.evaluation.boundary import BoundaryCOCOeval

        ev = BoundaryCOCOeval(coco_gt, coco_dt, dilation_ratio=dilation_ratio)
    else:
        ev = COCOeval(coco_gt, coco_dt, iou_type)
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = {name: (None if float(v) == -1 else float(v)) for name, v in zip(STAT_NAMES, ev.stats)}
    p = ev.params
    area_all = p.areaRngLbl.index("all")
    max_dets = len(p.maxDets) - 1  # 100
    precision = np.asarray(ev.eval["precision"])[:, :, :, area_all, max_dets]  # (T, R, K)
    t50 = int(np.argmin(np.abs(p.iouThrs - 0.5)))
    t75 = int(np.argmin(np.abs(p.iouThrs - 0.75)))
    per_class = {}
    for k, cid in enumerate(p.catIds):
        per_class[int(cid)] = {
            "AP": _mean_defined(precision[:, :, k]),
            "AP50": _mean_defined(precision[t50, :, k]),
            "AP75": _mean_defined(precision[t75, :, k]),
        }
    return CocoTypeResult(
        stats=stats,
        per_class=per_class,
        precision=precision.astype(np.float64),
        iou_thresholds=np.asarray(p.iouThrs, np.float64),
        recall_thresholds=np.asarray(p.recThrs, np.float64),
        category_ids=[int(c) for c in p.catIds],
    )
