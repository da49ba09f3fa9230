"""Masks <-> polygons: holes, several parts, islands in holes, simplification."""

import cv2
import numpy as np
import pytest

from masklab.structures.polygons import Polygon, join_rings, mask_to_polygons, polygons_to_mask


def ring(h=100, w=120, cy=50, cx=60, r_out=40, r_in=18):
    yy, xx = np.mgrid[:h, :w]
    d = np.hypot(yy - cy, xx - cx)
    return (d < r_out) & (d >= r_in)


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


@pytest.mark.parametrize(
    "tolerance, min_iou",
    [
        (0.0, 1.0),  # no simplification: contours fill back to the same pixels
        (1.0, 0.95),  # the default: the boundary moves by at most ~1 px
        (2.0, 0.95),
    ],
)
def test_ring_keeps_its_hole(tolerance, min_iou):
    m = ring()
    polys = mask_to_polygons(m, tolerance=tolerance)
    assert len(polys) == 1 and len(polys[0].holes) == 1
    back = polygons_to_mask(polys, m.shape)
    assert not back[50, 60]  # the hole stays empty
    assert iou(back, m) >= min_iou


def test_parts_and_island_in_a_hole():
    m = ring()
    yy, xx = np.mgrid[:100, :120]
    m |= np.hypot(yy - 50, xx - 60) < 8  # island inside the hole
    m[2:10, 2:30] = True  # a separate part
    polys = mask_to_polygons(m, tolerance=0)
    assert len(polys) == 3
    assert [len(p.holes) for p in polys] == [1, 0, 0]  # largest part (the ring) first
    assert (polygons_to_mask(polys, m.shape) == m).all()


def test_simplification_reduces_vertices():
    m = ring()
    exact = mask_to_polygons(m, tolerance=0)[0]
    simple = mask_to_polygons(m, tolerance=2.0)[0]
    assert len(simple.exterior) < len(exact.exterior) / 2


def test_empty_and_tiny_masks():
    assert mask_to_polygons(np.zeros((10, 10), bool)) == []
    dot = np.zeros((10, 10), bool)
    dot[4, 4] = True
    assert mask_to_polygons(dot) == []  # a one-pixel dot has no polygon (RLE formats keep it)
    assert not polygons_to_mask([], (10, 10)).any()


def test_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        mask_to_polygons(np.zeros((2, 10, 10), bool))
    with pytest.raises(ValueError, match="tolerance"):
        mask_to_polygons(np.zeros((10, 10), bool), tolerance=-1)


def test_join_rings_fills_back_with_holes_and_parts():
    m = ring()
    m[2:10, 2:30] = True
    joined = join_rings(mask_to_polygons(m, tolerance=0))
    filled = np.zeros(m.shape, np.uint8)
    cv2.fillPoly(filled, [np.round(joined).astype(np.int32).reshape(-1, 1, 2)], 1)
    filled = filled.astype(bool)
    assert not filled[50, 60] and filled[5, 10]
    assert iou(filled, m) >= 0.95  # the zero-width bridges add one-pixel lines at most
    assert join_rings([]).shape == (0, 2)
    square = Polygon(np.array([[0, 0], [5, 0], [5, 5], [0, 5]], float))
    assert (join_rings([square]) == square.exterior).all()
