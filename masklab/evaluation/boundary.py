"""Boundary AP (Cheng et al., "Boundary IoU", CVPR 2021): COCO AP with a boundary-sensitive IoU.

The boundary of a mask is its pixels within ``d`` of the mask's edge, ``d = round(dilation_ratio *
image diagonal)`` (at least 1 px; ratio 0.02 as the paper): the mask minus its erosion by a 3x3 kernel
``d`` times, the image border counting as edge (the mask is padded with background). The Boundary IoU of
two masks is the IoU of their boundaries, and Boundary AP's matching IoU is ``min(mask IoU, boundary
IoU)`` for non-crowd ground truth and the plain mask IoU (intersection over the detection) against crowd
regions — the reference ``boundary-iou-api`` and ``faster-coco-eval``'s ``iouType="boundary"`` exactly;
``tests/test_boundary_ap.py`` checks the numbers against the latter to 1e-6.

Only ``computeIoU`` changes: pycocotools' ``COCOeval`` does the matching, accumulating and areas.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval

__all__ = ["mask_boundary", "BoundaryCOCOeval", "DILATION_RATIO"]

#: boundary width as a fraction of the image diagonal (the paper's default)
DILATION_RATIO = 0.02


def mask_boundary(mask: np.ndarray, *, dilation_ratio: float = DILATION_RATIO) -> np.ndarray:
    """bool/uint8 (H, W) mask -> uint8 (H, W) boundary mask (1 within ``d`` px of the edge; module docstring)."""
    import cv2

    mask = np.asarray(mask, np.uint8)
    h, w = mask.shape
    d = max(1, int(round(dilation_ratio * np.sqrt(h * h + w * w))))
    padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=d)[1 : h + 1, 1 : w + 1]
    return mask - eroded


def _boundary_rle(rle: dict, dilation_ratio: float) -> dict:
    mask = mask_utils.decode(rle)
    return mask_utils.encode(np.asfortranarray(mask_boundary(mask, dilation_ratio=dilation_ratio)))


class BoundaryCOCOeval(COCOeval):
    """pycocotools' ``COCOeval`` for masks (``iouType`` "segm") with Boundary AP's IoU (module docstring).

    Each annotation's boundary is computed once (cached by the annotation object)."""

    def __init__(self, coco_gt, coco_dt, *, dilation_ratio: float = DILATION_RATIO) -> None:
        super().__init__(coco_gt, coco_dt, "segm")
        self.dilation_ratio = dilation_ratio
        self._boundaries: dict[int, dict] = {}

    def _boundary(self, ann: dict) -> dict:
        key = id(ann)
        if key not in self._boundaries:
            self._boundaries[key] = _boundary_rle(ann["segmentation"], self.dilation_ratio)
        return self._boundaries[key]

    def computeIoU(self, imgId, catId):  # noqa: N802, N803 - pycocotools' names
        ious = super().computeIoU(imgId, catId)
        if len(ious) == 0:
            return ious
        p = self.params
        if p.useCats:
            gt, dt = self._gts[imgId, catId], self._dts[imgId, catId]
        else:
            gt = [g for c in p.catIds for g in self._gts[imgId, c]]
            dt = [d for c in p.catIds for d in self._dts[imgId, c]]
        order = np.argsort([-d["score"] for d in dt], kind="mergesort")  # as the parent orders them
        dt = [dt[i] for i in order][: p.maxDets[-1]]
        crowd = [int(g["iscrowd"]) for g in gt]
        b_ious = np.asarray(mask_utils.iou([self._boundary(d) for d in dt], [self._boundary(g) for g in gt], crowd))
        ious = np.array(ious, copy=True)
        non_crowd = ~np.asarray(crowd, bool)
        ious[:, non_crowd] = np.minimum(ious[:, non_crowd], b_ious[:, non_crowd])
        return ious
