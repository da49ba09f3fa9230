"""Masks -> polygons along the pixel *edges* (corner coordinates), for ImageJ ROIs and GIS polygons.

:mod:`masklab.structures.polygons` traces pixel *centres* (OpenCV's contours): filled by ImageJ or
measured by a GIS, such a polygon is half a pixel smaller all round (cellpose #757's "ROIs one pixel
smaller than the labels"). Here a vertex ``(x, y)`` is a pixel *corner*: pixel ``(col, row)`` is the
unit square ``[col, col + 1] x [row, row + 1]``. Filling a ring set with the even-odd (or non-zero) rule
at pixel centres, as ImageJ does, gives the mask back exactly, and a polygon's area is its pixel count.

Parts are 4-connected (pixels touching only at a corner are separate parts, so every ring is simple as
GIS validity wants); each part is one outer ring plus the rings of its holes. Rings run with the
object on their left in image coordinates (x right, y down): outer rings have negative shoelace area in
those coordinates, holes positive (so north-up map coordinates, y flipped, give counter-clockwise outer
rings, as RFC 7946 asks). Only corners are kept (no collinear vertices); rings are not repeated at the end.
"""

from __future__ import annotations

import numpy as np

from masklab.structures.polygons import Polygon

__all__ = ["pixel_polygons", "ring_area"]


def ring_area(ring: np.ndarray) -> float:
    """Shoelace signed area of a closed ring (K, 2) x, y (not repeated at the end)."""
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _edges(m: np.ndarray) -> dict[tuple[int, int], list[tuple[int, int]]]:
    """Directed boundary edges (object on the left) keyed by their start corner."""
    p = np.pad(m, 1)
    out: dict[tuple[int, int], list[tuple[int, int]]] = {}

    def add(ys, xs, dx0, dy0, dx1, dy1):
        for y, x in zip(ys.tolist(), xs.tolist()):
            out.setdefault((x + dx0, y + dy0), []).append((x + dx1, y + dy1))

    core = p[1:-1, 1:-1]
    ys, xs = np.nonzero(core & ~p[:-2, 1:-1])  # top edge, walked right to left
    add(ys, xs, 1, 0, 0, 0)
    ys, xs = np.nonzero(core & ~p[2:, 1:-1])  # bottom edge, left to right
    add(ys, xs, 0, 1, 1, 1)
    ys, xs = np.nonzero(core & ~p[1:-1, :-2])  # left edge, downwards
    add(ys, xs, 0, 0, 0, 1)
    ys, xs = np.nonzero(core & ~p[1:-1, 2:])  # right edge, upwards
    add(ys, xs, 1, 1, 1, 0)
    return out


def _next(edges, at: tuple[int, int], came: tuple[int, int]) -> tuple[int, int]:
    """The edge to follow from corner ``at``: at a corner where two parts touch diagonally, the left turn
    (it stays with the pixel just walked along, keeping parts 4-connected)."""
    outs = edges[at]
    if len(outs) == 1:
        return outs.pop()
    left = (at[0] + came[1], at[1] - came[0])
    for k, nxt in enumerate(outs):
        if nxt == left:
            return outs.pop(k)
    return outs.pop()


def _rings(m: np.ndarray) -> list[np.ndarray]:
    edges = _edges(m)
    rings = []
    while edges:
        start = next(iter(edges))
        pts = [start]
        at = edges[start].pop()
        came = (at[0] - start[0], at[1] - start[1])
        if not edges[start]:
            del edges[start]
        while at != start:
            pts.append(at)
            nxt = _next(edges, at, came)
            if not edges[at]:
                del edges[at]
            came, at = (nxt[0] - at[0], nxt[1] - at[1]), nxt
        ring = np.asarray(pts, np.float64)
        d_prev = ring - np.roll(ring, 1, axis=0)
        d_next = np.roll(ring, -1, axis=0) - ring
        corner = (d_prev[:, 0] * d_next[:, 1] - d_prev[:, 1] * d_next[:, 0]) != 0
        rings.append(ring[corner])
    return rings


def pixel_polygons(mask: np.ndarray, *, offset_xy: tuple[int, int] = (0, 0)) -> list[Polygon]:
    """bool (H, W) -> its 4-connected parts as :class:`Polygon` in pixel-corner coordinates (+ ``offset_xy``),
    largest part first. Exact: no simplification, the filled polygons are the mask."""
    import cv2

    mask = np.asarray(mask, bool)
    if mask.ndim != 2:
        raise ValueError(f"pixel_polygons: expected a 2-D (H, W) mask, found shape {mask.shape}")
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4)
    parts: list[tuple[int, Polygon]] = []
    off = np.asarray(offset_xy, np.float64)
    for k in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[k])
        rings = _rings(labels[y : y + h, x : x + w] == k)
        outer = [r for r in rings if ring_area(r) < 0]
        holes = [r + off + (x, y) for r in rings if ring_area(r) > 0]
        parts.append((area, Polygon(outer[0] + off + (x, y), holes)))
    parts.sort(key=lambda p: -p[0])
    return [p for _, p in parts]
