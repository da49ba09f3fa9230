"""The matterport tutorial's evaluation helpers: hand-computed answers, the tutorial's array layouts,
and the documented fixes of the original's edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from masklab.evaluation import matterport_utils as mu

H, W = 20, 30


def _masks(*boxes_yxyx) -> np.ndarray:
    """(H, W, N) bool masks filling each y1, x1, y2, x2 box (the tutorial's layout)."""
    out = np.zeros((H, W, len(boxes_yxyx)), bool)
    for i, (y1, x1, y2, x2) in enumerate(boxes_yxyx):
        out[y1:y2, x1:x2, i] = True
    return out


def test_compute_iou_and_overlaps():
    box = np.array([0, 0, 10, 10])
    boxes = np.array([[0, 0, 10, 10], [0, 5, 10, 15], [20, 20, 30, 30]])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    np.testing.assert_allclose(mu.compute_iou(box, boxes, 100, areas), [1.0, 50 / 150, 0.0])
    ov = mu.compute_overlaps(boxes, box[None])
    assert ov.shape == (3, 1)
    np.testing.assert_allclose(ov[:, 0], [1.0, 1 / 3, 0.0])
    assert mu.compute_overlaps(np.zeros((0, 4)), boxes).shape == (0, 3)


def test_compute_overlaps_masks():
    a = _masks((0, 0, 10, 10))
    b = _masks((0, 5, 10, 15), (0, 0, 10, 10), (15, 20, 20, 30))
    ov = mu.compute_overlaps_masks(a, b)
    np.testing.assert_allclose(ov, [[50 / 150, 1.0, 0.0]])
    # No masks on one side: an (N1, N2) zero matrix (the original returned (H, N2) here).
    assert mu.compute_overlaps_masks(np.zeros((H, W, 0)), b).shape == (0, 3)
    assert mu.compute_overlaps_masks(a, np.zeros((H, W, 0))).shape == (1, 0)
    # Two empty masks: IoU 0, not NaN.
    assert mu.compute_overlaps_masks(np.zeros((H, W, 1)), np.zeros((H, W, 1)))[0, 0] == 0.0
    with pytest.raises(ValueError, match="share"):
        mu.compute_overlaps_masks(a, np.zeros((H + 1, W, 1)))


GT_BOXES = np.array([[0, 0, 10, 10], [10, 15, 20, 25]])
GT_CLASS = np.array([1, 2])
GT_MASKS = _masks(*GT_BOXES)


def test_perfect_predictions_give_ap_1():
    ap, precisions, recalls, overlaps = mu.compute_ap(
        GT_BOXES, GT_CLASS, GT_MASKS, GT_BOXES, GT_CLASS, np.array([0.9, 0.8]), GT_MASKS)
    assert ap == 1.0
    np.testing.assert_allclose(recalls, [0, 0.5, 1, 1])
    np.testing.assert_allclose(precisions, [1, 1, 1, 0])
    np.testing.assert_allclose(overlaps, np.eye(2))


def test_false_positive_ranked_first_halves_the_first_step():
    # Predictions in score order: FP (class 1 far away), TP class 2, TP class 1.
    pred_boxes = np.array([[12, 0, 18, 8], [10, 15, 20, 25], [0, 0, 10, 10]])
    pred_masks = _masks(*pred_boxes)
    ap, precisions, recalls, _ = mu.compute_ap(
        GT_BOXES, GT_CLASS, GT_MASKS, pred_boxes, np.array([1, 2, 1]), np.array([0.9, 0.8, 0.7]), pred_masks)
    # precision 0, 1/2, 2/3 at recall 0, 1/2, 1; envelope 2/3 everywhere -> AP = 2/3.
    assert ap == pytest.approx(2 / 3)
    np.testing.assert_allclose(recalls, [0, 0, 0.5, 1, 1])
    gt_match, pred_match, _ = mu.compute_matches(
        GT_BOXES, GT_CLASS, GT_MASKS, pred_boxes, np.array([1, 2, 1]), np.array([0.9, 0.8, 0.7]), pred_masks)
    assert pred_match.tolist() == [-1, 1, 0] and gt_match.tolist() == [2, 1]


def test_wrong_class_and_low_iou_do_not_match():
    pred_boxes = np.array([[0, 0, 10, 10], [10, 15, 20, 19]])  # right place wrong class; IoU 0.4
    ap, _, _, overlaps = mu.compute_ap(GT_BOXES, GT_CLASS, GT_MASKS, pred_boxes, np.array([2, 2]),
                                       np.array([0.9, 0.8]), _masks(*pred_boxes))
    assert ap == 0.0
    assert overlaps[1, 1] == pytest.approx(0.4)
    # At IoU threshold 0.3 the second prediction matches: precision 1/2 at recall 1/2.
    ap30, _, _, _ = mu.compute_ap(GT_BOXES, GT_CLASS, GT_MASKS, pred_boxes, np.array([2, 2]),
                                  np.array([0.9, 0.8]), _masks(*pred_boxes), iou_threshold=0.3)
    assert ap30 == pytest.approx(0.25)


def test_a_ground_truth_is_matched_once_even_by_the_top_prediction():
    # Two identical predictions of the first object. The original's "gt_match[j] > 0" test let the
    # duplicate take the ground truth already matched by prediction 0; here it is a false positive.
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10]])
    gt_match, pred_match, _ = mu.compute_matches(
        GT_BOXES[:1], GT_CLASS[:1], GT_MASKS[..., :1], boxes, np.array([1, 1]), np.array([0.9, 0.8]), _masks(*boxes))
    assert pred_match.tolist() == [0, -1] and gt_match.tolist() == [0]


def test_zero_padding_is_trimmed_and_empty_cases():
    padded = np.concatenate([GT_BOXES, np.zeros((2, 4), int)])
    ap, _, _, _ = mu.compute_ap(padded, np.array([1, 2, 0, 0]), GT_MASKS, GT_BOXES, GT_CLASS, np.array([0.9, 0.8]), GT_MASKS)
    assert ap == 1.0
    none = np.zeros((0, 4))
    ap, _, _, _ = mu.compute_ap(GT_BOXES, GT_CLASS, GT_MASKS, none, np.zeros(0, int), np.zeros(0), np.zeros((H, W, 0)))
    assert ap == 0.0
    ap, _, _, _ = mu.compute_ap(none, np.zeros(0, int), np.zeros((H, W, 0)), GT_BOXES, GT_CLASS, np.array([0.9, 0.8]), GT_MASKS)
    assert np.isnan(ap)  # no ground truth: undefined, as in the original


def test_compute_ap_range(capsys):
    pred_boxes = np.array([[0, 0, 10, 10], [10, 15, 19, 23]])  # second: IoU 9*8/100 = 0.72
    args = (GT_BOXES, GT_CLASS, GT_MASKS, pred_boxes, GT_CLASS, np.array([0.9, 0.8]), _masks(*pred_boxes))
    # Thresholds 0.50..0.70 (5 of 10): AP 1; 0.75..0.95: only the first object, AP 0.5.
    assert mu.compute_ap_range(*args, verbose=0) == pytest.approx((5 * 1.0 + 5 * 0.5) / 10)
    assert mu.compute_ap_range(*args, iou_thresholds=np.array([0.5, 0.9]), verbose=1) == pytest.approx(0.75)
    out = capsys.readouterr().out
    assert "AP @0.50-0.90:\t 0.750" in out


def test_compute_recall():
    recall, positive = mu.compute_recall(np.array([[0, 0, 10, 10], [0, 0, 10, 10], [15, 0, 20, 5]]), GT_BOXES, 0.5)
    assert recall == 0.5 and positive.tolist() == [0, 1]


def test_works_on_segmenter_detect_dicts():
    """The tutorial's loop: ground truth and ``detect()`` dicts in, AP out (Instances.to_mrcnn layouts)."""
    from masklab.structures.instances import Instances

    masks = np.transpose(GT_MASKS, (2, 0, 1))
    inst = Instances.from_masks(masks, class_ids=[1, 2], labels=["a", "b"], scores=[0.9, 0.6])
    r = inst.to_mrcnn(["BG", "a", "b"])
    ap, _, _, _ = mu.compute_ap(GT_BOXES, GT_CLASS, GT_MASKS, r["rois"], r["class_ids"], r["scores"], r["masks"])
    assert ap == 1.0
