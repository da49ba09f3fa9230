"""Matterport's image molding (square resize + pad + mean subtraction) and result unmolding, in numpy.

The resize is skimage's ``resize(order=1, mode="constant", anti_aliasing=False)``, i.e. scipy's
``ndimage.zoom(order=1, mode="grid-constant", cval=0, grid_mode=True)``: bilinear with half-pixel centres
where samples outside the image count as 0 (so the border rows/columns darken). torch's
``interpolate(align_corners=False)`` clamps at the edges instead, which changes thousands of border
values, so the zoom is written out here with scipy's arithmetic order to reproduce its uint8 results.
skimage then clips the result to the input's range (:func:`skimage_resize`), which undoes part of the
darkening whenever the input has no 0 value: both the image resize and every mask resize go through it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from masklab.models.matterport.config import MatterportConfig

__all__ = ["MoldedImage", "zoom_linear", "skimage_resize", "mold_image", "norm_boxes", "unmold_detections", "UnmoldedDetections"]


def _axis_weights(n_in: int, n_out: int):
    """For each output index: the two source indices (may lie outside [0, n_in)) and their weights, float64."""
    zoom = n_in / n_out  # scipy: input.shape / output_shape in float64 (grid_mode=True)
    cc = (np.arange(n_out, dtype=np.float64) + 0.5) * zoom - 0.5
    start = np.floor(cc)
    t = cc - start
    i0 = start.astype(np.int64)
    return i0, i0 + 1, 1.0 - t, t


def zoom_linear(array: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of the first two axes with zero outside the image (skimage ``resize(order=1)``).

    ``array``: (H, W) or (H, W, C), any real dtype. Returns float64 for integer input (skimage's
    ``preserve_range`` path) and the input's float dtype otherwise (values computed in float64 and cast,
    as scipy does). The sum runs in scipy's order, ``((v00 wy0) wx0 + (v01 wy0) wx1) + ...``.
    """
    h, w = array.shape[:2]
    oh, ow = int(out_hw[0]), int(out_hw[1])
    src = array.astype(np.float64, copy=False)
    y0, y1, wy0, wy1 = _axis_weights(h, oh)
    x0, x1, wx0, wx1 = _axis_weights(w, ow)
    # Pad one zero row/column each side so out-of-image neighbours read 0 (grid-constant, cval 0).
    padded = np.zeros((h + 2, w + 2) + array.shape[2:], np.float64)
    padded[1:-1, 1:-1] = src
    ry0, ry1 = np.clip(y0 + 1, 0, h + 1), np.clip(y1 + 1, 0, h + 1)
    rx0, rx1 = np.clip(x0 + 1, 0, w + 1), np.clip(x1 + 1, 0, w + 1)
    extra = (None,) * (array.ndim - 2)
    wy0, wy1 = wy0[(slice(None), None) + extra], wy1[(slice(None), None) + extra]
    wx0, wx1 = wx0[(None, slice(None)) + extra], wx1[(None, slice(None)) + extra]
    v00 = padded[ry0][:, rx0]
    v01 = padded[ry0][:, rx1]
    v10 = padded[ry1][:, rx0]
    v11 = padded[ry1][:, rx1]
    out = v00 * wy0 * wx0
    out += v01 * wy0 * wx1
    out += v10 * wy1 * wx0
    out += v11 * wy1 * wx1
    if np.issubdtype(array.dtype, np.floating):
        return out.astype(array.dtype)
    return out


def skimage_resize(array: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """matterport's ``utils.resize``: skimage ``resize(order=1, mode="constant", cval=0, clip=True,
    anti_aliasing=False)`` = :func:`zoom_linear`, then skimage's output clip.

    The clip (skimage's ``_clip_warp_output``) limits the result to the input's own ``[min, max]``,
    widened to include ``cval`` = 0 only when 0 lies outside the input's range but inside the output's.
    So when the input's minimum is above 0 (a photo without a black pixel; a 28x28 mask of sigmoid
    values) the border rows and columns that the zero-outside zoom darkened are raised back to that
    minimum: the image's corners, where two darkened borders meet, change the most. Same dtypes as
    :func:`zoom_linear`.
    """
    out = zoom_linear(array, out_hw)
    if out.size == 0 or array.size == 0:
        return out
    lo, hi = float(array.min()), float(array.max())
    if not lo <= 0.0 <= hi and out.min() <= 0.0 <= out.max():
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    np.clip(out, lo, hi, out=out)
    return out


@dataclass(frozen=True)
class MoldedImage:
    """One image as matterport feeds it to the network.

    ``image_u8``: uint8 (S, S, 3) resized and zero-padded, before mean subtraction; ``window``: int
    ``(y1, x1, y2, x2)`` of the image inside it, in molded pixels (y2, x2 exclusive); ``scale``: resize
    factor; ``original_hw``: the input's (H, W).
    """

    image_u8: np.ndarray
    window: tuple[int, int, int, int]
    scale: float
    original_hw: tuple[int, int]

    def network_input(self, config: MatterportConfig) -> np.ndarray:
        """float32 (S, S, 3): ``float32(u8 - MEAN_PIXEL)`` (subtracted in float64, as matterport)."""
        return (self.image_u8.astype(np.float64) - np.asarray(config.MEAN_PIXEL, np.float64)).astype(np.float32)


def mold_image(image: np.ndarray, config: MatterportConfig) -> MoldedImage:
    """Resize (``IMAGE_RESIZE_MODE="square"``) and pad an RGB uint8 (H, W, 3) image like ``mold_inputs``."""
    h, w = image.shape[:2]
    min_dim, max_dim = config.IMAGE_MIN_DIM, config.IMAGE_MAX_DIM
    scale = max(1.0, min_dim / min(h, w))
    if scale < config.IMAGE_MIN_SCALE:
        scale = config.IMAGE_MIN_SCALE
    if round(max(h, w) * scale) > max_dim:  # Python round (half to even), as matterport
        scale = max_dim / max(h, w)
    if scale != 1:
        nh, nw = round(h * scale), round(w * scale)
        resized = skimage_resize(image, (nh, nw))
    else:
        nh, nw = h, w
        resized = image.astype(np.float64)
    top, left = (max_dim - nh) // 2, (max_dim - nw) // 2
    canvas = np.zeros((max_dim, max_dim, image.shape[2]), np.float64)
    canvas[top : top + nh, left : left + nw] = resized
    # matterport casts back with astype: truncation, not rounding
    return MoldedImage(
        image_u8=canvas.astype(np.uint8),
        window=(top, left, top + nh, left + nw),
        scale=float(scale),
        original_hw=(h, w),
    )


def norm_boxes(boxes: np.ndarray, shape_hw: tuple[int, int]) -> np.ndarray:
    """Pixel boxes ``(y1, x1, y2, x2)`` (y2, x2 exclusive) -> normalized float32, matterport's ``norm_boxes``."""
    h, w = shape_hw
    scale = np.array([h - 1, w - 1, h - 1, w - 1])
    shift = np.array([0, 0, 1, 1])
    return np.divide((boxes - shift), scale).astype(np.float32)


def _denorm_boxes(boxes: np.ndarray, shape_hw: tuple[int, int]) -> np.ndarray:
    h, w = shape_hw
    scale = np.array([h - 1, w - 1, h - 1, w - 1])
    shift = np.array([0, 0, 1, 1])
    return np.around(np.multiply(boxes, scale) + shift).astype(np.int32)


@dataclass(frozen=True)
class UnmoldedDetections:
    """Final results in original-image pixels (matterport's ``detect()`` dict, masks channel-first).

    ``rois`` int32 (N, 4) ``y1, x1, y2, x2`` (y2, x2 exclusive); ``class_ids`` int32 (N,);
    ``scores`` float32 (N,); ``masks`` bool (N, H, W); ``mask_probs`` float32 (N, 28, 28), the mask head's
    probabilities before pasting (masklab's per-instance quality reads them).
    """

    rois: np.ndarray
    class_ids: np.ndarray
    scores: np.ndarray
    masks: np.ndarray
    mask_probs: np.ndarray | None = None


def unmold_detections(
    detections: np.ndarray, mask_probs: np.ndarray, molded: MoldedImage, *, molded_hw: tuple[int, int]
) -> UnmoldedDetections:
    """matterport's ``unmold_detections``.

    ``detections``: float32 (K, 6) ``[y1, x1, y2, x2 (normalized to the molded image), class_id, score]``,
    zero-padded; ``mask_probs``: float32 (K', 28, 28) the sigmoid mask of each row's class (K' >= the
    number of non-padding rows).
    """
    zero_ix = np.where(detections[:, 4] == 0)[0]
    n = int(zero_ix[0]) if zero_ix.shape[0] > 0 else detections.shape[0]
    boxes = detections[:n, :4]
    class_ids = detections[:n, 4].astype(np.int32)
    scores = detections[:n, 5]
    masks = mask_probs[:n]
    wy1, wx1, wy2, wx2 = norm_boxes(np.asarray(molded.window), molded_hw)
    shift = np.array([wy1, wx1, wy1, wx1])
    wh, ww = wy2 - wy1, wx2 - wx1
    scale = np.array([wh, ww, wh, ww])
    boxes = _denorm_boxes(np.divide(boxes - shift, scale), molded.original_hw)
    # Boxes clipped onto the window border collapse to a 1-pixel line (+1 on y2/x2) and are kept;
    # only boxes with area <= 0 go.
    keep = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) > 0
    boxes, class_ids, scores, masks = boxes[keep], class_ids[keep], scores[keep], masks[keep]
    h, w = molded.original_hw
    full = np.zeros((len(boxes), h, w), bool)
    for i, (y1, x1, y2, x2) in enumerate(boxes.tolist()):
        small = skimage_resize(masks[i].astype(np.float32), (y2 - y1, x2 - x1))
        # Boxes may reach past the image (a window-border box +1); numpy slicing crops, as matterport's paste.
        region = full[i, y1:y2, x1:x2]
        region[...] = (small >= 0.5)[: region.shape[0], : region.shape[1]]
    return UnmoldedDetections(
        rois=boxes.astype(np.int32), class_ids=class_ids, scores=scores.astype(np.float32), masks=full,
        mask_probs=np.asarray(masks, np.float32),
    )
