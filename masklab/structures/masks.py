"""Mask helpers: COCO RLE (pycocotools), tight boxes, centroids, perimeters, and mask pasting.

Conventions: masks are bool (N, H, W); boxes float32 (N, 4) xyxy in pixels with x2/y2 the right/bottom
edge; RLE is COCO *compressed* RLE ``{"size": [h, w], "counts": str}`` (column-major, as COCO).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["encode_rle", "decode_rle", "masks_to_boxes", "mask_centroids", "mask_perimeters", "paste_masks"]


def encode_rle(masks: np.ndarray) -> list[dict]:
    """bool (N, H, W) -> N COCO compressed RLE dicts with ``counts`` as str (JSON-ready)."""
    from pycocotools import mask as mask_utils

    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"encode_rle: expected bool masks (N, H, W), found shape {masks.shape}")
    if len(masks) == 0:
        return []
    # pycocotools wants Fortran-ordered uint8 (H, W, N).
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    for r in rles:
        r["counts"] = r["counts"].decode("ascii")
        r["size"] = [int(v) for v in r["size"]]
    return rles


def decode_rle(rles: Sequence[dict], image_size: tuple[int, int]) -> np.ndarray:
    """COCO RLE dicts (compressed with str/bytes counts, or uncompressed list counts) -> bool (N, H, W)."""
    from pycocotools import mask as mask_utils

    h, w = image_size
    if len(rles) == 0:
        return np.zeros((0, h, w), bool)
    fixed = []
    for r in rles:
        size = [int(v) for v in r["size"]]
        if size != [h, w]:
            raise ValueError(f"decode_rle: RLE size {size} does not match the image size {[h, w]}")
        counts = r["counts"]
        if isinstance(counts, list):  # uncompressed RLE
            fixed.append(mask_utils.frPyObjects({"size": size, "counts": counts}, h, w))
        else:
            fixed.append({"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts})
    out = mask_utils.decode(fixed)  # (H, W, N) uint8
    return np.ascontiguousarray(out.transpose(2, 0, 1)).astype(bool)


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """bool (N, H, W) -> float32 (N, 4) tight xyxy boxes (x2, y2 exclusive); an empty mask gives zeros."""
    masks = np.asarray(masks, dtype=bool)
    out = np.zeros((len(masks), 4), np.float32)
    for i, m in enumerate(masks):
        rows = np.flatnonzero(m.any(axis=1))
        if rows.size == 0:
            continue
        cols = np.flatnonzero(m.any(axis=0))
        out[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return out


def mask_centroids(masks: np.ndarray) -> np.ndarray:
    """bool (N, H, W) -> float64 (N, 2) centroid (x, y) with pixel centres at +0.5; NaN for empty masks."""
    masks = np.asarray(masks, dtype=bool)
    out = np.full((len(masks), 2), np.nan)
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        if xs.size:
            out[i] = (xs.mean() + 0.5, ys.mean() + 0.5)
    return out


def mask_perimeters(masks: np.ndarray) -> np.ndarray:
    """bool (N, H, W) -> float64 (N,): summed length of every contour (outer and holes), OpenCV arcLength."""
    import cv2

    masks = np.asarray(masks, dtype=bool)
    out = np.zeros(len(masks))
    for i, m in enumerate(masks):
        if not m.any():
            continue
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
        out[i] = sum(cv2.arcLength(c, True) for c in contours)
    return out


def paste_masks(mask_probs, boxes, image_size: tuple[int, int], *, threshold: float = 0.5, padding: int = 1) -> np.ndarray:
    """Paste low-resolution mask probabilities into full-image bool masks.

    Args:
        mask_probs: float tensor (N, 1, M, M), probabilities in [0, 1] (M = 28 for Mask R-CNN).
        boxes: float tensor (N, 4), xyxy in pixels of the output image.
        image_size: (H, W) of the output image.
        threshold: probability above which a pixel is inside (torchvision/matterport use 0.5).
        padding: border added around each mask before resizing, as torchvision does.

    Returns:
        bool ndarray (N, H, W). Bit-identical to thresholding torchvision's
        ``paste_masks_in_image`` output, but never builds the (N, H, W) float tensor: each mask is
        resized to its box, thresholded, and written into a bool array.
    """
    import torch
    import torch.nn.functional as F
    from torchvision.models.detection.roi_heads import expand_boxes, expand_masks

    h, w = image_size
    n = int(mask_probs.shape[0])
    out = np.zeros((n, h, w), dtype=bool)
    if n == 0:
        return out
    masks, scale = expand_masks(mask_probs, padding=padding)
    boxes = expand_boxes(boxes, scale).to(dtype=torch.int64)
    boxes_l = boxes.tolist()
    for i in range(n):
        x0, y0, x1, y1 = boxes_l[i]
        bw, bh = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
        m = F.interpolate(masks[i][None], size=(bh, bw), mode="bilinear", align_corners=False)[0, 0]
        xa, xb = max(x0, 0), min(x1 + 1, w)
        ya, yb = max(y0, 0), min(y1 + 1, h)
        if xa >= xb or ya >= yb:
            continue
        crop = m[(ya - y0) : (yb - y0), (xa - x0) : (xb - x0)]
        out[i, ya:yb, xa:xb] = (crop > threshold).numpy()
    return out
