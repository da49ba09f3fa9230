"""``imread(fname)``: an image file as RGB uint8 (H, W, 3), through masklab's one image loader."""

from __future__ import annotations

import numpy as np

__all__ = ["imread"]


def imread(fname, as_gray: bool = False) -> np.ndarray:
    """Read ``fname`` as RGB uint8 (H, W, 3) (EXIF-upright; alpha composited on grey); ``as_gray``:
    float64 (H, W) luma in [0, 1], as scikit-image returns it."""
    from masklab.io.images import load_image

    rgb = load_image(fname).array
    if as_gray:
        return rgb.astype(np.float64) @ np.array([0.2125, 0.7154, 0.0721]) / 255.0
    return rgb
