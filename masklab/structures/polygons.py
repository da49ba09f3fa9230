"""Masks <-> polygons that keep holes and separate parts (OpenCV contours).

Coordinates: a vertex ``(x, y)`` is the column/row *index* of a boundary pixel (OpenCV's contour
convention; in the ``+0.5`` pixel-centre convention of boxes it is that pixel's centre). Filling the
polygon with :func:`cv2.fillPoly` (boundary included) gives the mask back exactly when
``tolerance == 0``; a tolerance ``t`` moves the boundary by at most ``t`` pixels.

A mask becomes a list of :class:`Polygon` parts; each part has one outer ring and the rings of its
holes. An island inside a hole is a part of its own. Rings with fewer than 3 vertices (1–2 pixel dots)
are dropped: polygon formats cannot draw them (the RLE formats keep them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Polygon", "mask_to_polygons", "polygons_to_mask", "join_rings"]


@dataclass(frozen=True)
class Polygon:
    """One connected part of a mask.

    ``exterior``: float64 (K, 2) ``x, y`` vertices of the outer ring (K >= 3), not repeated at the end.
    ``holes``: float64 (Ki, 2) rings, one per hole inside this part.
    """

    exterior: np.ndarray
    holes: list[np.ndarray] = field(default_factory=list)

    def rings(self) -> list[np.ndarray]:
        """The outer ring then every hole ring."""
        return [self.exterior, *self.holes]


def _simplify(contour: np.ndarray, tolerance: float) -> np.ndarray:
    import cv2

    if tolerance > 0:
        contour = cv2.approxPolyDP(contour, tolerance, True)
    return contour.reshape(-1, 2).astype(np.float64)


def mask_to_polygons(mask: np.ndarray, *, tolerance: float = 1.0) -> list[Polygon]:
    """bool (H, W) -> the mask's parts as :class:`Polygon` (outer ring + holes), largest part first.

    ``tolerance``: Douglas-Peucker simplification in pixels (0 keeps every contour corner).
    """
    import cv2

    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask_to_polygons: expected a 2-D (H, W) mask, found shape {mask.shape}")
    if tolerance < 0:
        raise ValueError(f"mask_to_polygons: tolerance must be >= 0 pixels, found {tolerance}")
    # RETR_CCOMP: a two-level hierarchy, outer rings (parent -1) and the holes directly inside them.
    contours, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return []
    hier = hierarchy[0]
    parts: list[tuple[float, Polygon]] = []
    for i, c in enumerate(contours):
        if hier[i][3] != -1:
            continue
        ext = _simplify(c, tolerance)
        if len(ext) < 3:
            continue
        holes = []
        child = hier[i][2]
        while child != -1:
            h = _simplify(contours[child], tolerance)
            if len(h) >= 3:
                holes.append(h)
            child = hier[child][0]
        parts.append((cv2.contourArea(c), Polygon(ext, holes)))
    parts.sort(key=lambda p: -p[0])
    return [p for _, p in parts]


def _int_ring(ring: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(ring, np.float64)).astype(np.int32).reshape(-1, 1, 2)


def polygons_to_mask(polygons: Sequence[Polygon], image_size: tuple[int, int]) -> np.ndarray:
    """Parts -> bool (H, W). Inverse of :func:`mask_to_polygons` (exact when it ran with tolerance 0).

    Each part is drawn on its own: outer ring filled, holes cleared, then the hole rings drawn back,
    because OpenCV's hole contours run through the object's own boundary pixels.
    """
    import cv2

    h, w = image_size
    out = np.zeros((h, w), np.uint8)
    part = np.zeros((h, w), np.uint8)
    for poly in polygons:
        part[:] = 0
        cv2.fillPoly(part, [_int_ring(poly.exterior)], 1)
        if poly.holes:
            rings = [_int_ring(r) for r in poly.holes]
            cv2.fillPoly(part, rings, 0)
            cv2.polylines(part, rings, True, 1)
        out |= part
    return out.astype(bool)


def join_rings(polygons: Sequence[Polygon]) -> np.ndarray:
    """Every ring of every part joined into one ring by zero-width bridges (the "keyhole" trick).

    For formats that allow one polygon per object (YOLO-seg): filled with :func:`cv2.fillPoly`
    (even-odd rule) the holes stay empty and separate parts are all drawn. Returns float64 (K, 2) x, y.
    """
    rings = [r for p in polygons for r in p.rings()]
    if not rings:
        return np.zeros((0, 2))
    merged = np.asarray(rings[0], np.float64)
    for ring in rings[1:]:
        ring = np.asarray(ring, np.float64)
        d = ((merged[:, None, :] - ring[None, :, :]) ** 2).sum(-1)
        i, j = np.unravel_index(int(np.argmin(d)), d.shape)
        # walk to ring[j], all the way round it, back to ring[j], then back to merged[i]
        loop = np.concatenate([ring[j:], ring[: j + 1]])
        merged = np.concatenate([merged[: i + 1], loop, merged[i:]])
    return merged
