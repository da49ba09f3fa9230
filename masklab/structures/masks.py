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


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """bool (H, W) -> ``(x0, y0, x1, y1)``, the tight box of its True pixels in pixel indices (x1, y1
    exclusive), or None for an empty mask. ``mask[y0:y1, x0:x1]`` is the mask's crop."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """bool (N, H, W) -> float32 (N, 4) tight xyxy boxes (x2, y2 exclusive); an empty mask gives zeros."""
    masks = np.asarray(masks, dtype=bool)
    out = np.zeros((len(masks), 4), np.float32)
    for i, m in enumerate(masks):
        box = tight_box(m)
        if box is not None:
            out[i] = box
    return out


def mask_centroids(masks: np.ndarray) -> np.ndarray:
    """bool (N, H, W) -> float64 (N, 2) centroid (x, y) with pixel centres at +0.5; NaN for empty masks."""
    masks = np.asarray(masks, dtype=bool)
    out = np.full((len(masks), 2), np.nan)
    for i, m in enumerate(masks):
        box = tight_box(m)
        if box is None:
            continue
        x0, y0, x1, y1 = box
        # nonzero over the tight box only (the same pixels in the same order as over the whole mask, so
        # the same float result), at the object's cost rather than the image's
        ys, xs = np.nonzero(m[y0:y1, x0:x1])
        out[i] = ((xs + x0).mean() + 0.5, (ys + y0).mean() + 0.5)
    return out


def mask_perimeters(masks: np.ndarray) -> np.ndarray:
    """bool (N, H, W) -> float64 (N,): summed length of every contour (outer and holes), OpenCV arcLength."""
    import cv2

    masks = np.asarray(masks, dtype=bool)
    out = np.zeros(len(masks))
    for i, m in enumerate(masks):
        box = tight_box(m)
        if box is None:
            continue
        # the tight box and a 1-pixel margin (zeros, or the image's edge, as on the whole mask): the same
        # contours, shifted, at the object's cost rather than the image's
        x0, y0, x1, y1 = box
        crop = m[max(y0 - 1, 0) : y1 + 1, max(x0 - 1, 0) : x1 + 1]
        contours, _ = cv2.findContours(crop.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
        out[i] = sum(cv2.arcLength(c, True) for c in contours)
    return out


def _source_index(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear (``align_corners=False``) source rows for ``out_size`` outputs from ``in_size`` inputs:
    ``(i0, i1, lambda1)`` in float32 exactly as torch's CPU kernel computes them (``scale`` =
    in/out in float32; ``src = scale * (dst + 0.5) - 0.5`` clamped at 0; ``i1 = min(i0 + 1, in - 1)``)."""
    scale = np.float32(in_size) / np.float32(out_size)
    dst = np.arange(out_size, dtype=np.float32)
    src = scale * (dst + np.float32(0.5)) - np.float32(0.5)
    src = np.maximum(src, np.float32(0))
    i0 = src.astype(np.int64)  # src >= 0: truncation is floor
    i1 = np.minimum(i0 + 1, in_size - 1)
    lam1 = np.clip(src - i0.astype(np.float32), np.float32(0), np.float32(1))
    return i0, i1, lam1


def _resize_bilinear(m: np.ndarray, out_h: int, out_w: int, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
    """float32 (h, w) -> the ``rows`` x ``cols`` window of its (out_h, out_w) resize, equal to
    ``F.interpolate(mode="bilinear", align_corners=False)`` on the CPU there (same index and weight
    arithmetic, same order of operations: each output is ``ly0 * top + ly1 * bottom`` with ``top`` and
    ``bottom`` the x-interpolations of its two source rows). The x-interpolation is done once per source
    row (h rows) rather than once per output row, and only the window is computed: the same float
    operations on the same operands, so the same bits, at a fraction of the work for large boxes."""
    y0, y1, ly1 = (a[rows] for a in _source_index(m.shape[0], out_h))
    x0, x1, lx1 = (a[cols] for a in _source_index(m.shape[1], out_w))
    ly0, lx0 = np.float32(1) - ly1, np.float32(1) - lx1
    across = lx0 * m[:, x0] + lx1 * m[:, x1]  # (h, window width): every source row interpolated along x
    return ly0[:, None] * across[y0] + ly1[:, None] * across[y1]


def _expanded_boxes(boxes: np.ndarray, scale: float) -> np.ndarray:
    """torchvision's ``expand_boxes`` in float32, then truncated to int64 as its paste does."""
    b = boxes.astype(np.float32, copy=False)
    half = np.float32(0.5)
    w_half = (b[:, 2] - b[:, 0]) * half * np.float32(scale)
    h_half = (b[:, 3] - b[:, 1]) * half * np.float32(scale)
    x_c = (b[:, 2] + b[:, 0]) * half
    y_c = (b[:, 3] + b[:, 1]) * half
    return np.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], axis=1).astype(np.int64)


def paste_masks(mask_probs, boxes, image_size: tuple[int, int], *, threshold: float = 0.5, padding: int = 1) -> np.ndarray:
    """Paste low-resolution mask probabilities into full-image bool masks, in numpy (no torch).

    Args:
        mask_probs: float32 (N, 1, M, M) or (N, M, M) probabilities in [0, 1] (M = 28 for Mask R-CNN);
            a numpy array or a CPU torch tensor.
        boxes: float32 (N, 4), xyxy in pixels of the output image (may reach outside it).
        image_size: (H, W) of the output image.
        threshold: probability above which a pixel is inside (torchvision/matterport use 0.5).
        padding: border added around each mask before resizing, as torchvision does.

    Returns:
        bool ndarray (N, H, W), equal to thresholding torchvision's ``paste_masks_in_image`` output (the
        same float32 arithmetic: padded mask, expanded and truncated box, bilinear resize to the box,
        clipped to the image; ``tests/test_paste.py`` holds it to that on random boxes and masks), but
        never building the (N, H, W) float array: each mask is resized to its box and thresholded.
    """
    probs = np.asarray(mask_probs, dtype=np.float32)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    h, w = image_size
    n = int(boxes.shape[0])
    out = np.zeros((n, h, w), dtype=bool)
    if n == 0:
        return out
    probs = probs.reshape(n, probs.shape[-2], probs.shape[-1])
    m = probs.shape[-1]
    scale = float(m + 2 * padding) / m
    padded = np.pad(probs, ((0, 0), (padding, padding), (padding, padding)))
    for i, (x0, y0, x1, y1) in enumerate(_expanded_boxes(boxes, scale).tolist()):
        xa, xb = max(x0, 0), min(x1 + 1, w)
        ya, yb = max(y0, 0), min(y1 + 1, h)
        if xa >= xb or ya >= yb:
            continue
        window = _resize_bilinear(padded[i], max(y1 - y0 + 1, 1), max(x1 - x0 + 1, 1),
                                  rows=slice(ya - y0, yb - y0), cols=slice(xa - x0, xb - x0))
        np.greater(window, threshold, out=out[i, ya:yb, xa:xb])  # straight into the output: no temporary
    return out
