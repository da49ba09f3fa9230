"""The ``instance`` style: one colour per object, translucent fill, outline, box and caption."""

from __future__ import annotations

import colorsys

import numpy as np

from masklab.structures.instances import Instances

__all__ = ["InstanceVisualizer", "instance_colors"]


def instance_colors(n: int, *, seed: int = 0) -> np.ndarray:
    """uint8 (n, 3) distinct bright RGB colours (evenly spaced hues, shuffled by ``seed``)."""
    rng = np.random.default_rng(seed)
    hues = (np.arange(n) / max(n, 1) + rng.random()) % 1.0
    rng.shuffle(hues)
    return np.array([[int(255 * c) for c in colorsys.hsv_to_rgb(h, 0.85, 1.0)] for h in hues], np.uint8).reshape(-1, 3)


class InstanceVisualizer:
    """Draw each instance in its own colour. Large masks are drawn first so small ones stay visible."""

    def __init__(self, *, alpha: float = 0.5, boxes: bool = True, captions: bool = True, seed: int = 0) -> None:
        self.alpha, self.boxes, self.captions, self.seed = alpha, boxes, captions, seed

    def annotate(self, image: np.ndarray, instances: Instances) -> np.ndarray:
        import cv2

        out = np.array(image, dtype=np.uint8, copy=True)
        colors = instance_colors(len(instances), seed=self.seed)
        order = np.argsort(-instances.areas(), kind="stable")
        for i in order:
            m = instances.masks[i]
            c = colors[i].astype(np.float32)
            out[m] = (out[m] * (1 - self.alpha) + c * self.alpha).astype(np.uint8)
            contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, tuple(int(v) for v in colors[i]), 2)
        for i in order:
            color = tuple(int(v) for v in colors[i])
            x1, y1, x2, y2 = (int(round(v)) for v in instances.boxes[i])
            if self.boxes:
                cv2.rectangle(out, (x1, y1), (x2 - 1, y2 - 1), color, 1)
            if self.captions:
                text = f"{instances.labels[i]} {instances.scores[i]:.2f}"
                (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
                h, w = out.shape[:2]
                tx = int(np.clip(x1, 0, max(w - tw - 2, 0)))
                ty = int(np.clip(y1 - 4, th + 2, max(h - base - 2, th + 2)))
                cv2.rectangle(out, (tx, ty - th - 2), (tx + tw + 2, ty + base), (0, 0, 0), -1)
                cv2.putText(out, text, (tx + 1, ty), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        return out
