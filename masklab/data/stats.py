"""What a dataset's images and objects look like, in numbers a model card keeps (``ModelCard.data_stats``).

Tiled inference's ``auto`` reads them back: a model sees objects at the scale it was trained at when
each tile is as large as a training image (see :func:`masklab.inference.tiling.resolve_tile`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from masklab.data.coco import CocoGroundTruth

__all__ = ["dataset_stats"]


def dataset_stats(gt: CocoGroundTruth) -> dict[str, Any]:
    """``{"images", "image_short_side_px", "image_long_side_px", "objects", "object_size_px"}``.

    Sides are medians over the images, in original pixels. ``object_size_px`` is the square root of each
    non-crowd object's mask area, in original pixels, as ``{"p10", "median", "p90"}`` (None when the set
    has no objects)."""
    short = [min(im.height, im.width) for im in gt.images.values()]
    long = [max(im.height, im.width) for im in gt.images.values()]
    sizes = np.sqrt([float(a["area"]) for iid in gt.image_ids for a in gt.annotations(iid) if not a.get("iscrowd")])
    objects = None
    if len(sizes):
        p10, med, p90 = (round(float(v), 2) for v in np.percentile(sizes, [10, 50, 90]))
        objects = {"p10": p10, "median": med, "p90": p90}
    return {
        "images": len(short),
        "image_short_side_px": float(np.median(short)) if short else None,
        "image_long_side_px": float(np.median(long)) if long else None,
        "objects": int(len(sizes)),
        "object_size_px": objects,
    }
