"""A cheap appearance cue for tracking: the colour histogram of the image under an instance's mask.

Why colour and not a re-ID network: masklab's detectors are class-generic (no person/vehicle re-ID model
fits every class), and the pixels under a *mask* are the object's own (a box's histogram mixes in the
background, the reason box trackers need learned embeddings). The descriptor is a joint histogram in
CIE Lab (OpenCV's 8-bit Lab): 4 bins of lightness x 8 of a x 8 of b = 256 bins, normalised to sum 1.
Lightness is binned coarsely so a shadow or an exposure change moves few pixels across bins; hue and
saturation (a, b) carry most of the identity. Two descriptors compare by their Bhattacharyya
coefficient (:func:`color_similarity`): 1 for the same distribution, 0 for disjoint ones; a mask that
covers two objects scores in between against either.
"""

from __future__ import annotations

import numpy as np

__all__ = ["color_descriptor", "color_similarity", "N_BINS"]

_L_BINS, _AB_BINS = 4, 8
#: Length of a descriptor.
N_BINS = _L_BINS * _AB_BINS * _AB_BINS
_MAX_PIXELS = 4096  # larger masks are subsampled on a regular grid: the histogram barely changes


def color_descriptor(image: np.ndarray, crop: np.ndarray, x: int, y: int) -> np.ndarray | None:
    """The Lab histogram of ``image`` (RGB uint8 (H, W, 3)) under the bool mask ``crop`` placed with its
    top-left corner at pixel ``(x, y)``: float32 (N_BINS,) summing to 1, or None when the mask is empty."""
    import cv2  # a core dependency; imported here so the tracker module loads without touching OpenCV

    h, w = crop.shape
    patch, sel = image[y:y + h, x:x + w], crop
    if patch.shape[:2] != sel.shape:  # the crop runs past the image: keep the overlap
        sel = sel[:patch.shape[0], :patch.shape[1]]
    n = int(np.count_nonzero(sel))
    if n == 0:
        return None
    step = int(np.ceil(np.sqrt(n / _MAX_PIXELS)))
    if step > 1:
        patch, sel = patch[::step, ::step], sel[::step, ::step]
        if not sel.any():
            return None
    pixels = np.ascontiguousarray(patch[sel], dtype=np.uint8)[None]  # (1, n, 3): cvtColor wants an image
    lab = cv2.cvtColor(pixels, cv2.COLOR_RGB2LAB)[0].astype(np.int64)
    idx = (lab[:, 0] * _L_BINS >> 8) * _AB_BINS * _AB_BINS + (lab[:, 1] * _AB_BINS >> 8) * _AB_BINS + (lab[:, 2] * _AB_BINS >> 8)
    hist = np.bincount(idx, minlength=N_BINS).astype(np.float32)
    return hist / hist.sum()


def color_similarity(a: np.ndarray | None, b: np.ndarray | None) -> float:
    """Bhattacharyya coefficient of two descriptors, in [0, 1]; 1.0 when either is None (no evidence
    either way, so appearance neither helps nor blocks a match)."""
    if a is None or b is None:
        return 1.0
    return float(np.clip(np.sqrt(a * b).sum(), 0.0, 1.0))
