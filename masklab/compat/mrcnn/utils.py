"""matterport's ``mrcnn.utils``: the evaluation helpers (``compute_ap`` and friends), ``extract_bboxes``
and ``download_trained_weights``.

The ``compute_*`` functions come from :mod:`masklab.evaluation.matterport_utils` (same names, arguments
and results as matterport's).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

try:  # the evaluation package provides these; the rest of the shim works without them
    from masklab.evaluation.matterport_utils import (
        compute_ap,
        compute_ap_range,
        compute_iou,
        compute_matches,
        compute_overlaps,
        compute_overlaps_masks,
        compute_recall,
        trim_zeros,
    )
except ImportError:  # pragma: no cover - only while masklab.evaluation is incomplete
    pass

__all__ = [
    "compute_ap",
    "compute_ap_range",
    "compute_iou",
    "compute_matches",
    "compute_overlaps",
    "compute_overlaps_masks",
    "compute_recall",
    "trim_zeros",
    "extract_bboxes",
    "download_trained_weights",
    "COCO_MODEL_URL",
]

#: Where matterport publishes ``mask_rcnn_coco.h5`` (release v2.0).
COCO_MODEL_URL = "https://github.com/matterport/Mask_RCNN/releases/download/v2.0/mask_rcnn_coco.h5"


def extract_bboxes(mask: np.ndarray) -> np.ndarray:
    """bool (H, W, N) masks -> int32 (N, 4) boxes ``y1, x1, y2, x2`` (y2, x2 exclusive; zeros if empty)."""
    from masklab.structures.masks import masks_to_boxes

    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise ValueError(f"extract_bboxes: expected masks (H, W, N), found shape {mask.shape}")
    xyxy = masks_to_boxes(mask.transpose(2, 0, 1))
    return xyxy[:, [1, 0, 3, 2]].astype(np.int32)


def download_trained_weights(coco_model_path: str | os.PathLike, verbose: int = 1) -> None:
    """Put matterport's ``mask_rcnn_coco.h5`` at ``coco_model_path``, copied from masklab's weights cache.

    masklab does not download this file itself (matterport publishes no checksum to verify it against):
    when it is not in the cache, the error says where to get it and where to put it.
    """
    from masklab.errors import WeightsUnavailableError
    from masklab.models.weights import weights_path
    from masklab.models.zoo import MODELS

    spec = next((m.weights for m in MODELS.values() if m.weights is not None and m.weights.filename == "mask_rcnn_coco.h5"), None)
    cached = weights_path(spec) if spec is not None else None
    if cached is None or not cached.is_file():
        raise WeightsUnavailableError(
            f"mask_rcnn_coco.h5 is not downloaded automatically (matterport publishes no checksum to verify it).\n"
            f"  Download it from {COCO_MODEL_URL} to {coco_model_path}"
            + (f"\n  or save it as {cached} (masklab's weights cache)" if cached is not None else "")
        )
    if verbose:
        print(f"Copying pretrained model from {cached} to {coco_model_path} ...")
    shutil.copyfile(cached, Path(coco_model_path))
    if verbose:
        print("... done copying pretrained model!")
