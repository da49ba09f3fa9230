"""The non-learned parts of matterport's graph in torch: anchors, box deltas, TF-style NMS,
``tf.image.crop_and_resize``, the pyramid ROI align, the proposal layer and the detection layer.

Boxes are float32 ``(y1, x1, y2, x2)`` normalized to the molded image: pixel ``p`` maps to
``p / (S - 1)`` (and ``y2``/``x2`` to ``(p - 1) / (S - 1)``), as matterport's ``norm_boxes``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from masklab.models.matterport.config import MatterportConfig
from masklab.models.matterport.preprocess import norm_boxes

__all__ = [
    "generate_anchors",
    "apply_box_deltas",
    "clip_boxes",
    "tf_nms",
    "crop_and_resize",
    "roi_levels",
    "pyramid_roi_align",
    "proposal_layer",
    "detection_layer",
]


def generate_anchors(config: MatterportConfig) -> np.ndarray:
    """All anchors, float32 (A, 4) normalized ``(y1, x1, y2, x2)``, ordered level, y, x, ratio.

    One scale per level; centres at ``(y * stride, x * stride)`` with no half-stride offset;
    ``h = scale / sqrt(ratio)``, ``w = scale * sqrt(ratio)`` (matterport's ``generate_pyramid_anchors``).
    """
    size = config.IMAGE_MAX_DIM
    out = []
    for scale, stride in zip(config.RPN_ANCHOR_SCALES, config.BACKBONE_STRIDES):
        n = int(math.ceil(size / stride))
        scales, ratios = np.meshgrid(np.array([scale]), np.array(config.RPN_ANCHOR_RATIOS))
        scales, ratios = scales.flatten(), ratios.flatten()
        heights = scales / np.sqrt(ratios)
        widths = scales * np.sqrt(ratios)
        shifts = np.arange(0, n, config.RPN_ANCHOR_STRIDE) * stride
        shifts_x, shifts_y = np.meshgrid(shifts, shifts)
        box_widths, centers_x = np.meshgrid(widths, shifts_x)
        box_heights, centers_y = np.meshgrid(heights, shifts_y)
        centers = np.stack([centers_y, centers_x], axis=2).reshape([-1, 2])
        sizes = np.stack([box_heights, box_widths], axis=2).reshape([-1, 2])
        out.append(np.concatenate([centers - 0.5 * sizes, centers + 0.5 * sizes], axis=1))
    return norm_boxes(np.concatenate(out, axis=0), (size, size))


def apply_box_deltas(boxes: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """Apply ``(dy, dx, log dh, log dw)`` (already scaled by the std-devs) to (N, 4) boxes; no clamp."""
    height = boxes[:, 2] - boxes[:, 0]
    width = boxes[:, 3] - boxes[:, 1]
    center_y = boxes[:, 0] + 0.5 * height
    center_x = boxes[:, 1] + 0.5 * width
    center_y = center_y + deltas[:, 0] * height
    center_x = center_x + deltas[:, 1] * width
    height = height * torch.exp(deltas[:, 2])
    width = width * torch.exp(deltas[:, 3])
    y1 = center_y - 0.5 * height
    x1 = center_x - 0.5 * width
    return torch.stack([y1, x1, y1 + height, x1 + width], dim=1)


def clip_boxes(boxes: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Clip (N, 4) boxes into ``window`` (4,) ``(y1, x1, y2, x2)``; boxes outside collapse onto its border."""
    wy1, wx1, wy2, wx2 = window.unbind(0)
    y1 = torch.maximum(torch.minimum(boxes[:, 0], wy2), wy1)
    x1 = torch.maximum(torch.minimum(boxes[:, 1], wx2), wx1)
    y2 = torch.maximum(torch.minimum(boxes[:, 2], wy2), wy1)
    x2 = torch.maximum(torch.minimum(boxes[:, 3], wx2), wx1)
    return torch.stack([y1, x1, y2, x2], dim=1)


def tf_nms(boxes: torch.Tensor, scores: torch.Tensor, *, iou_threshold: float, max_output: int) -> torch.Tensor:
    """``tf.image.non_max_suppression``: indices (int64, best first) of kept boxes.

    Greedy in score order with ties going to the lower index; a box is suppressed when its IoU with a
    kept box is strictly greater than ``iou_threshold``; a zero-area box overlaps nothing.
    """
    from torchvision.ops import nms

    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    b = boxes[order]
    # TF reorders corners with min/max; torchvision wants (x1, y1, x2, y2) but IoU is symmetric in axes.
    b = torch.stack(
        [
            torch.minimum(b[:, 0], b[:, 2]),
            torch.minimum(b[:, 1], b[:, 3]),
            torch.maximum(b[:, 0], b[:, 2]),
            torch.maximum(b[:, 1], b[:, 3]),
        ],
        dim=1,
    )
    # Strictly decreasing stand-in scores make torchvision keep our stable, tie-broken order.
    rank = torch.arange(b.shape[0], 0, -1, dtype=torch.float32, device=b.device)
    # TF holds the threshold as float32; torchvision compares the float32 IoU with a double. Rounding the
    # threshold to float32 first makes "IoU exactly at the threshold" keep the box, as in TF.
    keep = nms(b, rank, float(np.float32(iou_threshold)))
    return order[keep[:max_output]]


def crop_and_resize(feature: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """``tf.image.crop_and_resize(method="bilinear")`` on one (C, H, W) map: returns (N, C, size, size).

    Sample ``i`` lies at ``y1 * (H - 1) + i * (y2 - y1) * (H - 1) / (size - 1)`` (corners aligned, one
    sample per cell, no averaging); a sample outside ``[0, H - 1]`` gives 0. Float32 arithmetic in TF's
    order.
    """
    c, h, w = feature.shape
    n = boxes.shape[0]
    if n == 0:
        return feature.new_zeros((0, c, size, size))
    y1, x1, y2, x2 = boxes.unbind(1)
    steps = torch.arange(size, dtype=feature.dtype, device=feature.device)
    h_scale = (y2 - y1) * (h - 1) / (size - 1)
    w_scale = (x2 - x1) * (w - 1) / (size - 1)
    in_y = (y1 * (h - 1))[:, None] + steps[None, :] * h_scale[:, None]  # (N, S)
    in_x = (x1 * (w - 1))[:, None] + steps[None, :] * w_scale[:, None]
    valid_y = (in_y >= 0) & (in_y <= h - 1)
    valid_x = (in_x >= 0) & (in_x <= w - 1)
    top_f, left_f = torch.floor(in_y), torch.floor(in_x)
    y_lerp, x_lerp = in_y - top_f, in_x - left_f
    top = top_f.clamp(0, h - 1).long()
    bottom = torch.ceil(in_y).clamp(0, h - 1).long()
    left = left_f.clamp(0, w - 1).long()
    right = torch.ceil(in_x).clamp(0, w - 1).long()
    flat = feature.reshape(c, h * w)

    def gather(rows, cols):  # (C, N, S, S)
        idx = rows[:, :, None] * w + cols[:, None, :]
        return flat[:, idx.reshape(-1)].reshape(c, n, size, size)

    tl, tr, bl, br = gather(top, left), gather(top, right), gather(bottom, left), gather(bottom, right)
    xl = x_lerp[None, :, None, :]
    top_v = tl + (tr - tl) * xl
    bottom_v = bl + (br - bl) * xl
    out = top_v + (bottom_v - top_v) * y_lerp[None, :, :, None]
    valid = (valid_y[:, :, None] & valid_x[:, None, :])[None]
    out = torch.where(valid, out, torch.zeros((), dtype=out.dtype, device=out.device))
    return out.permute(1, 0, 2, 3).contiguous()


def roi_levels(boxes: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
    """Pyramid level (int64 in 2..5) per normalized box: ``4 + round(log2(sqrt(h*w) / (224/sqrt(area))))``.

    ``round`` is half-to-even; zero-area boxes give log2(0) = -inf and land on level 2.
    """
    h = boxes[:, 2] - boxes[:, 0]
    w = boxes[:, 3] - boxes[:, 1]
    area = torch.tensor(float(image_hw[0] * image_hw[1]), dtype=torch.float32, device=boxes.device)
    ratio = torch.sqrt(h * w) / (224.0 / torch.sqrt(area))
    level = torch.log(ratio) / torch.log(torch.tensor(2.0, dtype=torch.float32, device=boxes.device))
    level = torch.round(level)
    level = torch.where(torch.isfinite(level), level, torch.full_like(level, -100.0))  # -inf -> lowest
    return (4 + level.clamp(-100, 100).long()).clamp(2, 5)


def pyramid_roi_align(features: list[torch.Tensor], boxes: torch.Tensor, size: int, *, image_hw) -> torch.Tensor:
    """Pool each box from its level's map (``features`` = [P2, P3, P4, P5], each (1, C, H, W)).

    Returns float32 (N, C, size, size) in box order.
    """
    levels = roi_levels(boxes, image_hw)
    c = features[0].shape[1]
    out = boxes.new_zeros((boxes.shape[0], c, size, size))
    for i, level in enumerate(range(2, 6)):
        ix = torch.nonzero(levels == level).flatten()
        if ix.numel():
            out[ix] = crop_and_resize(features[i][0], boxes[ix], size)
    return out


def proposal_layer(
    fg_probs: torch.Tensor, deltas: torch.Tensor, anchors: torch.Tensor, config: MatterportConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """matterport's ``ProposalLayer`` for one image.

    ``fg_probs`` (A,), ``deltas`` (A, 4) raw, ``anchors`` (A, 4) normalized. Returns (boxes float32
    (POST_NMS_ROIS_INFERENCE, 4) zero-padded, their fg probabilities (same length, 0 for padding)).
    """
    k = min(config.PRE_NMS_LIMIT, anchors.shape[0])
    ix = torch.sort(fg_probs, descending=True, stable=True).indices[:k]  # tf.nn.top_k: ties -> lower index
    scores = fg_probs[ix]
    d = deltas[ix] * torch.tensor(config.RPN_BBOX_STD_DEV, dtype=torch.float32, device=deltas.device)
    boxes = apply_box_deltas(anchors[ix], d)
    unit = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float32, device=boxes.device)
    boxes = clip_boxes(boxes, unit)
    keep = tf_nms(boxes, scores, iou_threshold=config.RPN_NMS_THRESHOLD, max_output=config.POST_NMS_ROIS_INFERENCE)
    out = boxes.new_zeros((config.POST_NMS_ROIS_INFERENCE, 4))
    out[: keep.numel()] = boxes[keep]
    out_scores = scores.new_zeros((config.POST_NMS_ROIS_INFERENCE,))
    out_scores[: keep.numel()] = scores[keep]
    return out, out_scores


def detection_layer(
    rois: torch.Tensor,
    probs: torch.Tensor,
    deltas: torch.Tensor,
    window: torch.Tensor,
    config: MatterportConfig,
) -> torch.Tensor:
    """matterport's ``DetectionLayer`` (``refine_detections_graph``) for one image.

    ``rois`` (R, 4) normalized; ``probs`` (R, K) softmax; ``deltas`` (R, K, 4) raw; ``window`` (4,)
    the normalized image area. Returns float32 (DETECTION_MAX_INSTANCES, 6)
    ``[y1, x1, y2, x2, class_id, score]`` sorted by score, zero-padded.

    Unlike torchvision: one class per ROI (the argmax), per-class NMS, and the min-confidence filter is
    skipped entirely when ``DETECTION_MIN_CONFIDENCE`` is 0 (matterport tests it for truthiness).
    """
    r = rois.shape[0]
    class_ids = torch.argmax(probs, dim=1)  # first maximum on ties, like tf.argmax
    arange = torch.arange(r, device=rois.device)
    class_scores = probs[arange, class_ids]
    specific = deltas[arange, class_ids] * torch.tensor(config.BBOX_STD_DEV, dtype=torch.float32, device=rois.device)
    refined = clip_boxes(apply_box_deltas(rois, specific), window)
    keep_mask = class_ids > 0
    if config.DETECTION_MIN_CONFIDENCE:
        keep_mask &= class_scores >= torch.tensor(config.DETECTION_MIN_CONFIDENCE, dtype=torch.float32)
    keep = torch.nonzero(keep_mask).flatten()
    kept: list[torch.Tensor] = []
    for cid in torch.unique(class_ids[keep]).tolist():
        ixs = keep[class_ids[keep] == cid]
        sel = tf_nms(
            refined[ixs],
            class_scores[ixs],
            iou_threshold=config.DETECTION_NMS_THRESHOLD,
            max_output=config.DETECTION_MAX_INSTANCES,
        )
        kept.append(ixs[sel])
    n_max = config.DETECTION_MAX_INSTANCES
    out = rois.new_zeros((n_max, 6))
    if not kept:
        return out
    keep = torch.sort(torch.cat(kept)).values  # set intersection: ascending ROI index
    order = torch.sort(class_scores[keep], descending=True, stable=True).indices[:n_max]
    keep = keep[order]
    det = torch.cat([refined[keep], class_ids[keep, None].to(torch.float32), class_scores[keep, None]], dim=1)
    out[: det.shape[0]] = det
    return out
