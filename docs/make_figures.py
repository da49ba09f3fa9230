"""Rebuild the README pictures: ``python docs/make_figures.py``.

No model is involved: the scene is drawn with OpenCV and its masks are the drawn shapes (hand-made
``Instances``), so the pictures show what each style does, not what a model detects.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from masklab.io.atomic import atomic_save_image
from masklab.structures.instances import Instances
from masklab.visualize import render

HERE = Path(__file__).resolve().parent


def _animal(canvas: np.ndarray, cx: int, cy: int, size: int, color) -> np.ndarray:
    """Draw a sitting cat-like figure (body, head, ears, tail); return its bool mask."""
    m = np.zeros(canvas.shape[:2], np.uint8)
    cv2.ellipse(m, (cx, cy), (size, int(size * 0.8)), 0, 0, 360, 1, -1)
    hy = cy - int(size * 1.05)
    cv2.circle(m, (cx, hy), int(size * 0.5), 1, -1)
    for sgn in (-1, 1):
        ear = np.array([[cx + sgn * size * 0.15, hy - size * 0.3], [cx + sgn * size * 0.5, hy - size * 0.3], [cx + sgn * size * 0.42, hy - size * 0.8]], np.int32)
        cv2.fillPoly(m, [ear], 1)
    cv2.ellipse(m, (cx + size, cy + int(size * 0.3)), (int(size * 0.6), int(size * 0.15)), -30, 0, 360, 1, -1)
    mask = m.astype(bool)
    canvas[mask] = color
    return mask


def scene() -> tuple[np.ndarray, Instances]:
    h, w = 260, 380
    rng = np.random.default_rng(7)
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2] = (150, 190, 225)  # sky
    img[h // 2 :] = (110, 160, 90)  # grass
    img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    masks = [
        _animal(img, 90, 170, 40, (200, 140, 60)),
        _animal(img, 200, 180, 34, (90, 80, 80)),
    ]
    dog = np.zeros((h, w), np.uint8)
    cv2.ellipse(dog, (305, 195), (48, 28), 0, 0, 360, 1, -1)
    cv2.circle(dog, (345, 150), 22, 1, -1)
    for x in (275, 295, 320, 335):
        cv2.rectangle(dog, (x, 205), (x + 8, 240), 1, -1)
    img[dog.astype(bool)] = (160, 110, 70)
    masks.append(dog.astype(bool))
    return img, Instances.from_masks(
        np.stack(masks), class_ids=[17, 17, 18], labels=["cat", "cat", "dog"], scores=[0.98, 0.95, 0.91]
    )


def main() -> None:
    img, inst = scene()
    atomic_save_image(HERE / "instance_vs_semantic.png", render(img, inst, ("instance", "semantic")))
    atomic_save_image(HERE / "styles.png", render(img, inst, ("splash", "blur", "outline")))


if __name__ == "__main__":
    main()
