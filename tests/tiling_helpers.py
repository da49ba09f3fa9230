"""Test doubles for tiled inference: a runtime that segments colour blobs exactly, and scenes of blobs.

:class:`BlobRuntime` finds every 4-connected region of one pure colour on a black background (red =
class 1, green = 2, blue = 3) and returns it as a detection with its exact mask, so tiled and untiled
results can be compared pixel for pixel.
"""

from __future__ import annotations

import numpy as np

from masklab.structures.detections import Detections

#: colour of each class id
COLORS = {1: (255, 0, 0), 2: (0, 255, 0), 3: (0, 0, 255)}


class BlobRuntime:
    """``predict(images)``: one detection per connected single-colour blob (score 0.9; 1 - 1e-3 per
    100 px of area so scores differ); counts the tiles it saw in ``calls``."""

    name = "blobs"
    precision = "fp32"

    def __init__(self) -> None:
        self.calls = 0
        self.shapes: list[tuple[int, int]] = []

    def predict(self, images):
        import cv2

        out = []
        for im in images:
            self.calls += 1
            self.shapes.append(im.shape[:2])
            masks, classes = [], []
            for cid, col in COLORS.items():
                region = np.all(im == np.array(col, np.uint8), axis=-1).astype(np.uint8)
                n, labels = cv2.connectedComponents(region, connectivity=4)
                for k in range(1, n):
                    masks.append(labels == k)
                    classes.append(cid)
            h, w = im.shape[:2]
            m = np.stack(masks) if masks else np.zeros((0, h, w), bool)
            from masklab.structures.masks import masks_to_boxes

            areas = m.sum(axis=(1, 2))
            out.append(Detections(boxes=masks_to_boxes(m), scores=(0.9 - 1e-5 * areas).astype(np.float32),
                                  class_ids=np.asarray(classes, np.int64), masks=m))
        return out


def blob_scene(h: int, w: int, rects) -> np.ndarray:
    """RGB uint8 (h, w, 3) black image with filled rectangles ``(class_id, x0, y0, x1, y1)``."""
    im = np.zeros((h, w, 3), np.uint8)
    for cid, x0, y0, x1, y1 in rects:
        im[y0:y1, x0:x1] = COLORS[cid]
    return im


def disc_scene(h: int, w: int, discs) -> np.ndarray:
    """RGB uint8 (h, w, 3) black image with filled discs ``(class_id, cx, cy, r)``."""
    import cv2

    im = np.zeros((h, w, 3), np.uint8)
    for cid, cx, cy, r in discs:
        cv2.circle(im, (int(cx), int(cy)), int(r), COLORS[cid], -1)
    return im
