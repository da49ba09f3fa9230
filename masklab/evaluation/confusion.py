"""Class confusion matrix at one IoU threshold, and counting accuracy, from COCO-style dicts.

Both use the predictions with ``score >= score_thresh`` (a detector's operating point; the COCO
metrics use every prediction). Per image, class-agnostic greedy matching in descending score order:
a prediction takes the unmatched non-crowd ground truth with IoU >= ``iou_thresh`` of its own class
with the highest IoU if there is one, else of any class (that pair is a confusion). IoU is mask IoU when
the predictions carry masks, else box IoU (pycocotools ``mask.iou``).

A prediction left unmatched that lies inside a crowd region (intersection over the prediction's own
area >= ``iou_thresh``, pycocotools' crowd rule) is ignored — neither a false positive nor counted —
since a crowd region is "many objects, not individually labelled".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["ConfusionMatrix", "ImageMatch", "CountTable", "match_image", "confusion_matrix", "count_table"]

BACKGROUND = "background"


@dataclass
class ImageMatch:
    """Matching of one image's kept predictions to its ground truth.

    ``gt_classes``/``pred_classes``: int64 category ids of the non-crowd ground truth and the kept
    (score >= threshold, not ignored) predictions; ``pairs``: int64 (M, 2) ``(gt index, pred index)``;
    ``pred_index``: int64 (P,) each kept prediction's index in the list given to :func:`match_image`
    (best score first); ``pair_ious``: float64 (M,) the IoU of each pair.
    """

    gt_classes: np.ndarray
    pred_classes: np.ndarray
    pairs: np.ndarray
    pred_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    pair_ious: np.ndarray = field(default_factory=lambda: np.zeros(0))


@dataclass
class ConfusionMatrix:
    """``matrix`` int64 (K+1, K+1): rows = ground-truth class, columns = predicted class, in ``labels``
    order; the last row/column is ``"background"`` (last row: predictions matching no object = false
    positives; last column: objects no prediction matched = missed). ``category_ids``: the K dataset ids."""

    labels: list[str]
    category_ids: list[int]
    matrix: np.ndarray
    iou_thresh: float
    score_thresh: float

    def to_dict(self) -> dict:
        return {
            "labels": self.labels,
            "category_ids": self.category_ids,
            "rows": "ground truth (last: background = false positive)",
            "columns": "prediction (last: background = missed)",
            "iou_thresh": self.iou_thresh,
            "score_thresh": self.score_thresh,
            "matrix": self.matrix.tolist(),
        }


def _segs(entries: list[dict], use_masks: bool) -> list:
    if use_masks:
        return [e["segmentation"] for e in entries]
    return [list(map(float, e["bbox"])) for e in entries]


def match_image(gt_anns: list[dict], preds: list[dict], *, image_size: tuple[int, int], use_masks: bool,
                iou_thresh: float, score_thresh: float) -> ImageMatch:
    """Match one image of ``image_size`` (H, W); ``gt_anns``: completed COCO annotations (see
    :class:`~masklab.data.coco.CocoGroundTruth`), ``preds``: checked COCO results with RLE masks."""
    from pycocotools import mask as mask_utils

    gts = [a for a in gt_anns if not a["iscrowd"]]
    crowds = [a for a in gt_anns if a["iscrowd"]]
    kept_index = sorted((k for k, p in enumerate(preds) if p["score"] >= score_thresh), key=lambda k: -preds[k]["score"])
    kept = [preds[k] for k in kept_index]
    gt_cls = np.array([a["category_id"] for a in gts], np.int64)
    pred_cls = np.array([p["category_id"] for p in kept], np.int64)

    def _rles(anns):
        if not use_masks:
            return _segs(anns, False)
        from masklab.data.coco import annotation_to_rle

        return [annotation_to_rle(a["segmentation"], *image_size, where=f"annotation {a['id']}") for a in anns]

    ious = np.zeros((len(kept), len(gts)))
    if kept and gts:
        ious = np.asarray(mask_utils.iou(_segs(kept, use_masks), _rles(gts), [0] * len(gts))).reshape(len(kept), len(gts))
    in_crowd = np.zeros(len(kept), bool)
    if kept and crowds:
        c = np.asarray(mask_utils.iou(_segs(kept, use_masks), _rles(crowds), [1] * len(crowds))).reshape(len(kept), len(crowds))
        in_crowd = c.max(axis=1) >= iou_thresh
    taken = np.zeros(len(gts), bool)
    pairs = []
    for i in range(len(kept)):
        ok = (ious[i] >= iou_thresh) & ~taken
        if not ok.any():
            continue
        same = ok & (gt_cls == pred_cls[i])
        cand = same if same.any() else ok
        j = int(np.argmax(np.where(cand, ious[i], -1.0)))
        taken[j] = True
        pairs.append((j, i))
    matched_pred = np.zeros(len(kept), bool)
    for _, i in pairs:
        matched_pred[i] = True
    keep = matched_pred | ~in_crowd
    new_index = np.cumsum(keep) - 1
    pairs_arr = np.array([(j, new_index[i]) for j, i in pairs], np.int64).reshape(-1, 2)
    return ImageMatch(gt_classes=gt_cls, pred_classes=pred_cls[keep], pairs=pairs_arr,
                      pred_index=np.array(kept_index, np.int64).reshape(-1)[keep],
                      pair_ious=np.array([ious[i, j] for j, i in pairs], np.float64).reshape(-1))


def confusion_matrix(matches: list[ImageMatch], categories: dict[int, str], *, iou_thresh: float,
                     score_thresh: float) -> ConfusionMatrix:
    """Sum the per-image matches into a :class:`ConfusionMatrix` over ``categories`` (id -> name)."""
    ids = list(categories)
    index = {cid: k for k, cid in enumerate(ids)}
    bg = len(ids)
    m = np.zeros((bg + 1, bg + 1), np.int64)
    for im in matches:
        gt_done = np.zeros(len(im.gt_classes), bool)
        pred_done = np.zeros(len(im.pred_classes), bool)
        for j, i in im.pairs:
            m[index[int(im.gt_classes[j])], index[int(im.pred_classes[i])]] += 1
            gt_done[j] = pred_done[i] = True
        for c in im.gt_classes[~gt_done]:
            m[index[int(c)], bg] += 1
        for c in im.pred_classes[~pred_done]:
            m[bg, index[int(c)]] += 1
    return ConfusionMatrix(
        labels=[categories[c] for c in ids] + [BACKGROUND],
        category_ids=ids,
        matrix=m,
        iou_thresh=iou_thresh,
        score_thresh=score_thresh,
    )


@dataclass
class CountTable:
    """Object counts per image and class: ``gt``/``pred`` int64 (n_images, K), columns in ``category_ids``
    order; ``pred`` counts the kept predictions (score >= ``score_thresh``, not ignored in crowds)."""

    image_ids: list[int]
    category_ids: list[int]
    names: list[str]
    gt: np.ndarray
    pred: np.ndarray
    score_thresh: float

    def summary(self) -> dict:
        """Counting accuracy over images: how far the number of predicted objects is from the true number.

        Per class and overall (all classes summed per image): ``mae`` mean absolute count error per
        image, ``mean_error`` mean signed error (predicted - true; > 0 over-counts), ``exact`` share of
        images whose count is exactly right, ``gt_total``/``pred_total`` summed counts;
        ``exact_all_classes``: share of images where every class's count is right. Images without
        ground truth take part (true count 0). Metrics are None when there are no images.
        """
        n = len(self.image_ids)

        def _summary(g: np.ndarray, p: np.ndarray) -> dict:
            err = p - g
            return {
                "mae": float(np.abs(err).mean()) if n else None,
                "mean_error": float(err.mean()) if n else None,
                "exact": float((err == 0).mean()) if n else None,
                "gt_total": int(g.sum()),
                "pred_total": int(p.sum()),
            }

        overall = _summary(self.gt.sum(axis=1), self.pred.sum(axis=1))
        overall["exact_all_classes"] = float((self.gt == self.pred).all(axis=1).mean()) if n else None
        return {
            "score_thresh": self.score_thresh,
            "images": n,
            "overall": overall,
            "per_class": {name: _summary(self.gt[:, k], self.pred[:, k]) for k, name in enumerate(self.names)},
        }


def count_table(image_ids: list[int], matches: list[ImageMatch], categories: dict[int, str], *,
                score_thresh: float) -> CountTable:
    """Count ground truth and kept predictions per image and class (``matches`` in ``image_ids`` order)."""
    ids = list(categories)
    index = {cid: k for k, cid in enumerate(ids)}
    gt = np.zeros((len(matches), len(ids)), np.int64)
    pr = np.zeros((len(matches), len(ids)), np.int64)
    for r, im in enumerate(matches):
        for c in im.gt_classes:
            gt[r, index[int(c)]] += 1
        for c in im.pred_classes:
            pr[r, index[int(c)]] += 1
    return CountTable(list(image_ids), ids, [categories[c] for c in ids], gt, pr, score_thresh)
