"""Photo effects driven by the masks: ``splash`` (colour only on the objects), ``blur`` (portrait mode)
and ``outline`` (contours only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from masklab.structures.instances import Instances
from masklab.visualize._draw import draw_caption, draw_contours, instance_colors

__all__ = ["SplashVisualizer", "BlurVisualizer", "OutlineVisualizer"]


def _union(instances: Instances, classes: Sequence[str] | None) -> np.ndarray:
    h, w = instances.image_size
    keep = instances if classes is None else instances.filter(classes=classes)
    return keep.masks.any(axis=0) if len(keep) else np.zeros((h, w), bool)


class SplashVisualizer:
    """The tutorial family's "colour splash": the objects keep their colours, everything else turns grey
    (R = G = B = the pixel's luma, ITU-R 601 weights). ``classes``: splash only these labels."""

    def __init__(self, *, classes: Sequence[str] | None = None) -> None:
        self.classes = None if classes is None else tuple(classes)

    def annotate(self, image: np.ndarray, instances: Instances) -> np.ndarray:
        img = np.asarray(image, dtype=np.uint8)
        grey = np.round(img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
        out = np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
        fg = _union(instances, self.classes)
        out[fg] = img[fg]
        return out


class BlurVisualizer:
    """Portrait mode: the background Gaussian-blurred, the objects (or only ``classes``) sharp.

    ``strength``: blur sigma as a fraction of the longer image side (0.01 = 1 %).
    """

    def __init__(self, *, classes: Sequence[str] | None = None, strength: float = 0.015) -> None:
        if strength <= 0:
            raise ValueError(f"blur strength must be > 0, found {strength}")
        self.classes = None if classes is None else tuple(classes)
        self.strength = strength

    def annotate(self, image: np.ndarray, instances: Instances) -> np.ndarray:
        import cv2

        img = np.asarray(image, dtype=np.uint8)
        sigma = max(1.0, self.strength * max(img.shape[:2]))
        out = cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, sigmaY=sigma)
        fg = _union(instances, self.classes)
        out[fg] = img[fg]
        return out


class OutlineVisualizer:
    """Only the contours (outer and holes) of each object, in its own colour; no fill, no boxes."""

    def __init__(self, *, thickness: int = 2, captions: bool = False, seed: int = 0) -> None:
        self.thickness, self.captions, self.seed = thickness, captions, seed

    def annotate(self, image: np.ndarray, instances: Instances) -> np.ndarray:
        out = np.array(image, dtype=np.uint8, copy=True)
        colors = instance_colors(len(instances), seed=self.seed)
        for i in range(len(instances)):
            draw_contours(out, instances.masks[i], colors[i], self.thickness)
            if self.captions:
                x1, y1 = (int(round(v)) for v in instances.boxes[i][:2])
                draw_caption(out, f"{instances.labels[i]} {instances.scores[i]:.2f}", x1, y1)
        return out
