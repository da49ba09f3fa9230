"""The ``semantic`` style: one colour per class (every cat the same colour), with a legend."""

from __future__ import annotations

import numpy as np

from masklab.structures.instances import Instances
from masklab.visualize._draw import class_color, draw_contours, draw_legend

__all__ = ["SemanticVisualizer"]


class SemanticVisualizer:
    """Paint each pixel in its class colour (:func:`~masklab.visualize._draw.class_color` of the class id).

    Args:
        alpha: fill opacity in [0, 1].
        legend: draw a ``class name`` legend (top-left) for the classes present.
        outlines: draw the outer boundary of each class region (not of each object: that is the point).
        boxes: draw per-object boxes (off by default: semantic segmentation has no objects).
    """

    def __init__(self, *, alpha: float = 0.6, legend: bool = True, outlines: bool = True, boxes: bool = False) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], found {alpha}")
        self.alpha, self.legend, self.outlines, self.boxes = alpha, legend, outlines, boxes

    def annotate(self, image: np.ndarray, instances: Instances) -> np.ndarray:
        """RGB uint8 (H, W, 3) -> a new annotated copy."""
        out = np.array(image, dtype=np.uint8, copy=True)
        classes: dict[int, str] = {}
        for cid, lab in zip(instances.class_ids.tolist(), instances.labels):
            classes.setdefault(cid, lab)
        for cid in classes:
            region = instances.masks[instances.class_ids == cid].any(axis=0)
            c = np.array(class_color(cid), np.float32)
            out[region] = (out[region] * (1 - self.alpha) + c * self.alpha).round().astype(np.uint8)
            if self.outlines:
                draw_contours(out, region, class_color(cid), 1)
        if self.boxes:
            import cv2

            for i in range(len(instances)):
                x1, y1, x2, y2 = (int(round(v)) for v in instances.boxes[i])
                cv2.rectangle(out, (x1, y1), (x2 - 1, y2 - 1), class_color(int(instances.class_ids[i])), 1)
        if self.legend:
            draw_legend(out, [(lab, class_color(cid)) for cid, lab in classes.items()])
        return out
