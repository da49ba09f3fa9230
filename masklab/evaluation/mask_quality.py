"""How well each prediction's ``quality`` predicts its true mask IoU, and AP when rescored by quality.

For every prediction that carries a ``quality`` (masklab's results do: :mod:`masklab.structures.quality`),
its *true IoU* is the best mask IoU with a non-crowd ground-truth object of the same class in its image
(0 when there is none: a false positive). :func:`quality_report` gives, over predictions with
``score >= score_thresh``:

- ``spearman``: Spearman rank correlation of quality and true IoU (ties get their mean rank; None with
  fewer than 3 predictions or a constant column);
- ``calibration``: 10 equal-width quality bins with their count, mean quality and mean true IoU (a
  well-calibrated quality lies on the diagonal; :func:`masklab.evaluation.plots.calibration_figure`);
- ``rescored``: mask AP and Boundary AP with every prediction's score replaced by ``score * quality``
  (Mask Scoring R-CNN's rescoring), next to the plain ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["QualityReport", "true_ious", "spearman", "calibration_bins", "quality_report"]

CALIBRATION_BINS = 10


@dataclass
class QualityReport:
    """See the module docstring; fractions in [0, 1]. ``predictions``: how many were compared."""

    predictions: int
    score_thresh: float
    spearman: float | None
    calibration: list[dict]
    rescored: dict[str, float | None]

    def to_dict(self) -> dict:
        return {"predictions": self.predictions, "score_thresh": self.score_thresh, "spearman": self.spearman,
                "calibration": self.calibration, "rescored": dict(self.rescored)}


def _rle(seg: dict) -> dict:
    counts = seg["counts"]
    return {"size": seg["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def true_ious(gt, results: Sequence[dict]) -> np.ndarray:
    """float64 (len(results),): each result's best mask IoU with a same-class, non-crowd ground-truth
    object of its image (0 when none); ``gt`` a :class:`~masklab.data.coco.CocoGroundTruth`, ``results``
    checked COCO results with ``segmentation``."""
    from pycocotools import mask as mask_utils

    from masklab.data.coco import annotation_to_rle

    out = np.zeros(len(results))
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(results):
        groups.setdefault((r["image_id"], r["category_id"]), []).append(i)
    for (image_id, cat), idx in groups.items():
        img = gt.images[image_id]
        anns = [a for a in gt.annotations(image_id) if a["category_id"] == cat and not a.get("iscrowd", 0)]
        if not anns:
            continue
        g = [annotation_to_rle(a["segmentation"], img.height, img.width, where=f"annotation {a.get('id')}") for a in anns]
        d = [_rle(results[i]["segmentation"]) for i in idx]
        ious = np.asarray(mask_utils.iou(d, g, [0] * len(g))).reshape(len(d), len(g))
        out[idx] = ious.max(axis=1)
    return out


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=float)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]  # ties: the mean of their ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman rank correlation in [-1, 1] (Pearson of average ranks); None when undefined."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 3:
        return None
    ra, rb = _ranks(a), _ranks(b)
    sa, sb = ra.std(), rb.std()
    if sa == 0 or sb == 0:
        return None
    return float(((ra - ra.mean()) * (rb - rb.mean())).mean() / (sa * sb))


def calibration_bins(quality: np.ndarray, iou: np.ndarray, *, bins: int = CALIBRATION_BINS) -> list[dict]:
    """``bins`` equal-width quality bins over [0, 1]: ``{lo, hi, count, mean_quality, mean_iou}`` (None when empty)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, quality, side="right") - 1, 0, bins - 1)
    out = []
    for k in range(bins):
        sel = which == k
        n = int(sel.sum())
        out.append({"lo": float(edges[k]), "hi": float(edges[k + 1]), "count": n,
                    "mean_quality": float(quality[sel].mean()) if n else None,
                    "mean_iou": float(iou[sel].mean()) if n else None})
    return out


def quality_report(gt, results: Sequence[dict], *, score_thresh: float, dilation_ratio: float,
                   plain: dict[str, float | None]) -> QualityReport | None:
    """The report for checked COCO ``results`` carrying ``quality`` (None when any lacks it or none has
    masks); ``plain``: the unrescored ``{"segm": AP, "boundary": AP}`` for the side-by-side."""
    from masklab.evaluation.coco_metrics import run_cocoeval

    if not results or any("quality" not in r or "segmentation" not in r for r in results):
        return None
    quality = np.array([r["quality"] for r in results], float)
    scores = np.array([r["score"] for r in results], float)
    iou = true_ious(gt, results)
    sel = scores >= score_thresh
    rescored_results = [dict(r, score=float(r["score"]) * float(r["quality"])) for r in results]
    coco_gt = gt.coco_api()
    rescored = {
        "segm_AP": plain.get("segm"),
        "segm_AP_rescored": run_cocoeval(coco_gt, rescored_results, "segm").stats["AP"],
        "boundary_AP": plain.get("boundary"),
        "boundary_AP_rescored": run_cocoeval(coco_gt, rescored_results, "boundary", dilation_ratio=dilation_ratio).stats["AP"],
    }
    return QualityReport(predictions=int(sel.sum()), score_thresh=score_thresh, spearman=spearman(quality[sel], iou[sel]),
                         calibration=calibration_bins(quality[sel], iou[sel]), rescored=rescored)
