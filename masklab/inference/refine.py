"""Edge-aware mask refinement that needs no extra model: a guided filter (He et al. 2010) on the image.

Mask R-CNN's masks are 28x28 probabilities per box, bilinearly upsampled when pasted, so their outlines
are smooth curves that cut across the object's real edges. :func:`refine_masks` upsamples each box's
probabilities exactly as :func:`~masklab.structures.masks.paste_masks` does, filters them with the image
crop as the guide (the output follows the image's edges where the coarse mask changes), and thresholds at
0.5 — inside the (padded) box only, so the cost grows with the boxes' area, not the image's.

OpenCV's ``ximgproc.guidedFilter`` is not in ``opencv-python-headless``; the filter here is the standard
grey-guide form built from ``cv2.boxFilter`` (O(1) per pixel in the radius).
"""

from __future__ import annotations

import numpy as np

__all__ = ["guided_filter", "refine_masks", "refined_masks"]


def guided_filter(guide: np.ndarray, src: np.ndarray, *, radius: int, eps: float) -> np.ndarray:
    """The grey-guide guided filter: float32 (h, w) ``guide`` and ``src`` (any range; here [0, 1]) ->
    float32 (h, w). ``radius`` in pixels (window 2r+1), ``eps`` the regulariser (in guide units squared:
    small keeps edges, large smooths)."""
    import cv2

    def mean(x):
        return cv2.boxFilter(x, cv2.CV_32F, (2 * radius + 1, 2 * radius + 1), borderType=cv2.BORDER_REFLECT)

    i, p = guide.astype(np.float32), src.astype(np.float32)
    mi, mp = mean(i), mean(p)
    var = mean(i * i) - mi * mi
    cov = mean(i * p) - mi * mp
    a = cov / (var + eps)
    b = mp - a * mi
    return mean(a) * i + mean(b)


def _grey(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 3:
        img = img[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return img.astype(np.float32) / 255.0


def refine_masks(image: np.ndarray, mask_probs: np.ndarray, boxes: np.ndarray, *, threshold: float = 0.5,
                 eps: float = 1e-3, radius_cells: float = 2.0, padding: int = 1) -> np.ndarray:
    """Refined bool masks (N, H, W) for an RGB uint8 ``image`` (H, W, 3).

    Args:
        mask_probs: float32 (N, M, M) mask-head probabilities in [0, 1] inside each box (before pasting).
        boxes: float32 (N, 4) xyxy in pixels of ``image``.
        eps: guided-filter regulariser (grey levels in [0, 1], squared).
        radius_cells: filter radius in 28x28 mask cells (one cell = box side / M pixels): how far the
            refined edge may move from the coarse one. The defaults (2 cells, eps 1e-3) are the middle of
            ``benchmarks/mask_quality.py --sweep``'s grid; on flat-coloured shapes larger radii and smaller
            eps score higher still, which would follow texture on real images.
        padding: as :func:`~masklab.structures.masks.paste_masks` (torchvision's paste).
    """
    import torch
    import torch.nn.functional as F
    from torchvision.models.detection.roi_heads import expand_boxes, expand_masks

    h, w = image.shape[:2]
    probs = np.asarray(mask_probs, np.float32)
    n = len(probs)
    out = np.zeros((n, h, w), bool)
    if n == 0:
        return out
    grey = _grey(image)
    masks, scale = expand_masks(torch.from_numpy(probs[:, None]), padding=padding)
    ib = expand_boxes(torch.as_tensor(np.asarray(boxes, np.float32)), scale).to(dtype=torch.int64).tolist()
    cells = probs.shape[-1]
    for i in range(n):
        x0, y0, x1, y1 = ib[i]
        bw, bh = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
        xa, xb, ya, yb = max(x0, 0), min(x1 + 1, w), max(y0, 0), min(y1 + 1, h)
        if xa >= xb or ya >= yb:
            continue
        m = F.interpolate(masks[i][None], size=(bh, bw), mode="bilinear", align_corners=False)[0, 0].numpy()
        crop = m[(ya - y0) : (yb - y0), (xa - x0) : (xb - x0)]
        radius = max(1, int(round(radius_cells * max(bw, bh) / cells)))
        refined = guided_filter(grey[ya:yb, xa:xb], crop, radius=radius, eps=eps)
        out[i, ya:yb, xa:xb] = refined > threshold
    return out


def refined_masks(det, image: np.ndarray, settings) -> np.ndarray:
    """``det.masks``, or (``settings.refine`` "guided" / "sam") the refined masks of a
    :class:`~masklab.structures.detections.Detections` for RGB uint8 ``image``; needs ``det.mask_probs``
    (untiled runs), else the masks are returned as they are."""
    if settings.refine == "none" or det.mask_probs is None or len(det.boxes) == 0:
        return det.masks
    if settings.refine == "guided":
        return refine_masks(image, det.mask_probs, det.boxes)
    from masklab.inference.sam import sam_refiner

    return sam_refiner(settings.sam_checkpoint, device=settings.device).refine(image, det.boxes, det.masks)
