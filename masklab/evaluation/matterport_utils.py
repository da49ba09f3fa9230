"""The matterport Mask R-CNN tutorial's evaluation helpers (``mrcnn/utils.py``), for users' existing scripts.

Same names, signatures, array layouts and results as the original, so code such as

    >>> AP, precisions, recalls, overlaps = compute_ap(gt_bbox, gt_class_id, gt_mask,   # doctest: +SKIP
    ...     r["rois"], r["class_ids"], r["scores"], r["masks"])

keeps working with ``Segmenter.detect()``'s dicts. Layouts: boxes int/float (N, 4) ``y1, x1, y2, x2``
with (y2, x2) outside the box; masks (H, W, N) bool or {0, 1}; class ids (N,) ints. These are
VOC-style AP at one IoU threshold over all classes at once (not COCO's AP: use
:func:`masklab.evaluation.evaluate_instances` for that).

Where the original misbehaves, this version differs on purpose (each covered by a test):

- ``compute_matches``: the original skips a ground truth only if ``gt_match[j] > 0``, so a ground truth
  matched by the top-scoring prediction (index 0) can be matched again by a duplicate; here every
  ground truth is matched at most once.
- ``compute_overlaps_masks``: the original tests ``shape[0]`` (the height) for "no masks"; here an empty
  set is N == 0 (last axis), giving a (N1, N2) zero matrix. Two empty masks have IoU 0, not NaN.
- ``compute_ap_range`` accepts a numpy array of thresholds (the original's ``or`` fails on one).
- ``compute_ap`` with no ground truth returns ``nan`` AP (undefined, as the original's 0/0) without a
  numpy warning.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "compute_iou",
    "compute_overlaps",
    "compute_overlaps_masks",
    "trim_zeros",
    "compute_matches",
    "compute_ap",
    "compute_ap_range",
    "compute_recall",
]


def compute_iou(box, boxes, box_area, boxes_area):
    """IoU of one box with each of ``boxes``.

    Args:
        box: (4,) ``y1, x1, y2, x2``.
        boxes: (N, 4) ``y1, x1, y2, x2``.
        box_area: float, the area of ``box``; boxes_area: (N,) areas of ``boxes`` (passed in so a caller
            computes them once).

    Returns:
        float64 (N,) IoU in [0, 1].
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    box = np.asarray(box, dtype=np.float64)
    inter_h = np.maximum(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0)
    inter_w = np.maximum(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0)
    inter = inter_h * inter_w
    union = box_area + np.asarray(boxes_area, dtype=np.float64) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def compute_overlaps(boxes1, boxes2):
    """IoU matrix float64 (N1, N2) between two sets of ``y1, x1, y2, x2`` boxes."""
    b1 = np.asarray(boxes1, dtype=np.float64).reshape(-1, 4)
    b2 = np.asarray(boxes2, dtype=np.float64).reshape(-1, 4)
    area1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
    area2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
    overlaps = np.zeros((len(b1), len(b2)))
    for j in range(len(b2)):
        overlaps[:, j] = compute_iou(b2[j], b1, area2[j], area1)
    return overlaps


def compute_overlaps_masks(masks1, masks2):
    """IoU matrix float64 (N1, N2) between masks (H, W, N1) and (H, W, N2); values > 0.5 count as inside."""
    m1 = np.asarray(masks1)
    m2 = np.asarray(masks2)
    n1 = m1.shape[-1] if m1.ndim == 3 else 0
    n2 = m2.shape[-1] if m2.ndim == 3 else 0
    if n1 == 0 or n2 == 0:
        return np.zeros((n1, n2))
    if m1.shape[:2] != m2.shape[:2]:
        raise ValueError(f"compute_overlaps_masks: masks must share (H, W); found {m1.shape[:2]} and {m2.shape[:2]}")
    f1 = (m1 > 0.5).reshape(-1, n1).astype(np.float64)
    f2 = (m2 > 0.5).reshape(-1, n2).astype(np.float64)
    inter = f1.T @ f2
    union = f1.sum(axis=0)[:, None] + f2.sum(axis=0)[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def trim_zeros(x):
    """Drop the rows of a 2-D array that are all zeros (the original's zero padding)."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"trim_zeros: expected a 2-D array, found shape {x.shape}")
    return x[~np.all(x == 0, axis=1)]


def compute_matches(gt_boxes, gt_class_ids, gt_masks, pred_boxes, pred_class_ids, pred_scores, pred_masks,
                    iou_threshold=0.5, score_threshold=0.0):
    """Match predictions to ground truth by mask IoU, greedily in descending score order.

    Zero-padded box rows are trimmed first (as the original). A prediction takes the unmatched ground
    truth of its class with the highest IoU >= ``iou_threshold``; ``score_threshold`` drops candidate
    pairs whose IoU is below it (the original's naming, kept).

    Returns:
        gt_match: float64 (N_gt,), index of the matched prediction *in score order*, or -1.
        pred_match: float64 (N_pred,), per prediction in score order, the matched ground truth index or -1.
        overlaps: float64 (N_pred, N_gt) mask IoU, predictions in score order.
    """
    gt_boxes = trim_zeros(np.asarray(gt_boxes).reshape(-1, 4))
    gt_masks = np.asarray(gt_masks)[..., : gt_boxes.shape[0]]
    gt_class_ids = np.asarray(gt_class_ids)[: gt_boxes.shape[0]]
    pred_boxes = trim_zeros(np.asarray(pred_boxes).reshape(-1, 4))
    pred_scores = np.asarray(pred_scores)[: pred_boxes.shape[0]]
    order = np.argsort(pred_scores, kind="stable")[::-1]
    pred_class_ids = np.asarray(pred_class_ids)[order]
    pred_masks = np.asarray(pred_masks)[..., order]

    overlaps = compute_overlaps_masks(pred_masks, gt_masks)
    pred_match = -1 * np.ones([len(order)])
    gt_match = -1 * np.ones([gt_boxes.shape[0]])
    for i in range(len(order)):
        ranked = np.argsort(overlaps[i], kind="stable")[::-1]
        low = np.where(overlaps[i, ranked] < score_threshold)[0]
        if low.size > 0:
            ranked = ranked[: low[0]]
        for j in ranked:
            if gt_match[j] > -1:  # already taken (the original's "> 0" let index 0 be taken twice)
                continue
            if overlaps[i, j] < iou_threshold:
                break
            if pred_class_ids[i] == gt_class_ids[j]:
                gt_match[j] = i
                pred_match[i] = j
                break
    return gt_match, pred_match, overlaps


def compute_ap(gt_boxes, gt_class_ids, gt_masks, pred_boxes, pred_class_ids, pred_scores, pred_masks,
               iou_threshold=0.5):
    """VOC-style average precision at one mask-IoU threshold (all classes pooled, as the original).

    Returns:
        mAP: float in [0, 1] (nan when there is no ground truth).
        precisions: float64 (N_pred + 2,), padded with 0 at both ends, made monotonically non-increasing.
        recalls: float64 (N_pred + 2,), padded with 0 and 1.
        overlaps: float64 (N_pred, N_gt) mask IoU, predictions in score order.
    """
    gt_match, pred_match, overlaps = compute_matches(
        gt_boxes, gt_class_ids, gt_masks, pred_boxes, pred_class_ids, pred_scores, pred_masks, iou_threshold
    )
    hits = np.cumsum(pred_match > -1)
    precisions = hits / (np.arange(len(pred_match)) + 1)
    if len(gt_match) == 0:
        recalls = np.full(len(pred_match), np.nan)
    else:
        recalls = hits.astype(np.float32) / len(gt_match)
    precisions = np.concatenate([[0], precisions, [0]])
    recalls = np.concatenate([[0], recalls, [1]])
    # Precision at a recall level = the best precision at that recall or beyond (the VOC envelope).
    for i in range(len(precisions) - 2, -1, -1):
        precisions[i] = np.maximum(precisions[i], precisions[i + 1])
    if len(gt_match) == 0:
        return float("nan"), precisions, recalls, overlaps
    steps = np.where(recalls[:-1] != recalls[1:])[0] + 1
    m_ap = float(np.sum((recalls[steps] - recalls[steps - 1]) * precisions[steps]))
    return m_ap, precisions, recalls, overlaps


def compute_ap_range(gt_box, gt_class_id, gt_mask, pred_box, pred_class_id, pred_score, pred_mask,
                     iou_thresholds=None, verbose=1):
    """Mean of :func:`compute_ap` over IoU thresholds (default 0.50, 0.55, ..., 0.95); prints each if verbose."""
    thresholds = np.arange(0.5, 1.0, 0.05) if iou_thresholds is None else np.asarray(iou_thresholds, dtype=float)
    aps = []
    for t in thresholds:
        ap, _, _, _ = compute_ap(gt_box, gt_class_id, gt_mask, pred_box, pred_class_id, pred_score, pred_mask,
                                 iou_threshold=t)
        if verbose:
            print(f"AP @{t:.2f}:\t {ap:.3f}")
        aps.append(ap)
    mean = float(np.array(aps).mean())
    if verbose:
        print(f"AP @{thresholds[0]:.2f}-{thresholds[-1]:.2f}:\t {mean:.3f}")
    return mean


def compute_recall(pred_boxes, gt_boxes, iou):
    """Share of ground-truth boxes hit by some prediction with box IoU >= ``iou``.

    Returns ``(recall, positive_ids)``: recall in [0, 1]; int64 indices of predictions whose best IoU >= ``iou``.
    """
    overlaps = compute_overlaps(pred_boxes, gt_boxes)
    if overlaps.size == 0:
        return (0.0 if overlaps.shape[1] else float("nan")), np.zeros(0, np.int64)
    iou_max = overlaps.max(axis=1)
    iou_argmax = overlaps.argmax(axis=1)
    positive_ids = np.where(iou_max >= iou)[0]
    return len(set(iou_argmax[positive_ids].tolist())) / overlaps.shape[1], positive_ids
