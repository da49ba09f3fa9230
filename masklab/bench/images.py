"""Generated images to time on when the user gives none."""

from __future__ import annotations

import numpy as np

__all__ = ["generated_images"]


def generated_images(n: int = 1, *, size_hw: tuple[int, int] = (480, 640), seed: int = 0) -> list[np.ndarray]:
    """``n`` synthetic RGB uint8 (H, W, 3) photo-like images (smooth background + solid shapes), seeded."""
    import cv2  # start-up time: only the bench draws images

    rng = np.random.default_rng(seed)
    h, w = size_hw
    out = []
    for _ in range(n):
        base = rng.integers(60, 200, (4, 4, 3)).astype(np.uint8)
        img = cv2.resize(base, (w, h), interpolation=cv2.INTER_CUBIC)
        img = np.clip(img.astype(np.int16) + rng.integers(-12, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        for _ in range(6):
            color = tuple(int(c) for c in rng.integers(0, 255, 3))
            cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
            r = int(rng.integers(min(h, w) // 12, min(h, w) // 4))
            if rng.random() < 0.5:
                cv2.circle(img, (cx, cy), r, color, -1)
            else:
                cv2.rectangle(img, (cx - r, cy - r // 2), (cx + r, cy + r // 2), color, -1)
        out.append(img)
    return out
