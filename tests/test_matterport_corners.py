"""matterport port on the inputs the reference image does not exercise: boxes at the window's corners and
edges, collapsed boxes, and images or masks without a 0 value (where skimage's output clip matters).

Fast: no weights, hand-made detection-layer inputs. The resize is checked against scikit-image itself
(matterport's ``utils.resize`` calls ``skimage.transform.resize``), not against a copy of its arithmetic.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from masklab.models.matterport import MatterportConfig, ops
from masklab.models.matterport.preprocess import (
    MoldedImage,
    mold_image,
    norm_boxes,
    skimage_resize,
    unmold_detections,
    zoom_linear,
)

skimage_transform = pytest.importorskip("skimage.transform")

S = 1024
WINDOW = (171, 0, 853, 1024)  # the reference image's: 426x640 resized by 1.6, padded top and bottom
HW = (426, 640)


def _matterport_resize(array: np.ndarray, out_hw, *, preserve_range: bool) -> np.ndarray:
    """What matterport's ``utils.resize`` calls (defaults ``order=1, mode="constant", cval=0, clip=True``)."""
    return skimage_transform.resize(
        array, out_hw, order=1, mode="constant", cval=0, clip=True, preserve_range=preserve_range, anti_aliasing=False
    )


def _scene(h: int, w: int, *, low: int, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 200 // w, yy * 200 // h, (xx + yy) * 100 // (h + w)], -1) + rng.integers(0, 40, (h, w, 3))
    return np.clip(img + low, 0, 255).astype(np.uint8)


# -- the resize: skimage's, clip included -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("in_hw", "out_hw", "low"),
    [((40, 60), (64, 96), 35), ((40, 60), (64, 96), 0), ((90, 70), (31, 23), 20), ((7, 5), (1, 13), 60)],
)
def test_image_resize_equals_skimage(in_hw, out_hw, low):
    img = _scene(*in_hw, low=low)
    ours = skimage_resize(img, out_hw)
    ref = _matterport_resize(img, out_hw, preserve_range=True)
    assert ours.dtype == ref.dtype == np.float64
    assert np.array_equal(ours.astype(np.uint8), ref.astype(np.uint8))  # matterport truncates with astype
    assert np.abs(ours - ref).max() <= 1e-9


@pytest.mark.parametrize("out_hw", [(3, 10), (1, 1), (58, 62), (120, 7), (28, 28)])
@pytest.mark.parametrize("low", [0.0, 0.3, 0.55])
def test_mask_resize_equals_skimage(out_hw, low):
    rng = np.random.default_rng(int(low * 100) + out_hw[0])
    mask = (low + (1 - low) * rng.random((28, 28))).astype(np.float32)  # sigmoid-like: never exactly 0
    ours, ref = skimage_resize(mask, out_hw), _matterport_resize(mask, out_hw, preserve_range=False)
    assert ours.dtype == ref.dtype == np.float32 and np.array_equal(ours, ref)


def test_mold_of_an_image_without_black_pixels_is_matterports():
    """skimage clips the resized image to the input's range: with no 0 in the image the darkened border
    (worst at the corners) is raised back to the image's minimum. The old zoom-only mold missed that and
    changed the features of exactly the corner boxes."""
    cfg = MatterportConfig(IMAGE_MIN_DIM=200, IMAGE_MAX_DIM=256)
    img = _scene(150, 230, low=45)
    m = mold_image(img, cfg)
    y1, x1, y2, x2 = m.window
    expected = np.zeros((256, 256, 3), np.float64)
    expected[y1:y2, x1:x2] = _matterport_resize(img, (y2 - y1, x2 - x1), preserve_range=True)
    assert np.array_equal(m.image_u8, expected.astype(np.uint8))
    # the case exercises the clip: zoom alone is darker, and only on the border
    zoom_only = zoom_linear(img, (y2 - y1, x2 - x1)).astype(np.uint8)
    darker = zoom_only < m.image_u8[y1:y2, x1:x2]
    assert (zoom_only <= m.image_u8[y1:y2, x1:x2]).all() and not darker[1:-1, 1:-1].any()
    assert darker.any()


# -- boxes at the window's edges, through the detection layer and unmolding ------------------------------


def _px_box(y1, x1, y2, x2) -> list[float]:
    """A molded-pixel box (y2, x2 inclusive, as matterport's normalized boxes) -> normalized."""
    return [y1 / (S - 1), x1 / (S - 1), y2 / (S - 1), x2 / (S - 1)]


def _detect(rois_px, class_id=77, scores=None, cfg=None):
    cfg = cfg or MatterportConfig(DETECTION_MIN_CONFIDENCE=0.2)
    n = len(rois_px)
    rois = torch.tensor([_px_box(*b) for b in rois_px], dtype=torch.float32)
    probs = torch.full((n, 81), 0.0)
    scores = scores if scores is not None else [0.217 + 0.01 * i for i in range(n)]
    for i, s in enumerate(scores):
        probs[i, class_id] = s
        probs[i, 0] = 0.1  # the argmax is class_id
    deltas = torch.zeros(n, 81, 4)
    window = torch.from_numpy(norm_boxes(np.asarray(WINDOW), (S, S)))
    return ops.detection_layer(rois, probs, deltas, window, cfg).numpy()


def _unmold(det, masks=None):
    n = int((det[:, 4] != 0).sum())
    masks = masks if masks is not None else np.full((n, 28, 28), 0.8, np.float32)
    molded = MoldedImage(np.zeros((S, S, 3), np.uint8), WINDOW, 1.6, HW)
    return unmold_detections(det, masks, molded, molded_hw=(S, S))


def test_tiny_box_clipped_at_the_top_left_corner_is_kept():
    """The held-out image's lost detection: a box reaching into the padding above and left of the image,
    clipped to a 3x10-px box at the image's corner (original pixels y1=0, x1=0, y2=3, x2=10)."""
    # original y2 = 3 (exclusive) <=> window-normalized 2/425 <=> molded 171 + 2 * 681/425 (inclusive)
    y2 = 171 + 2 * 681 / 425
    x2 = 9 * 1023 / 639
    det = _detect([(150, -10, y2, x2)])
    assert det[0, 4] == 77 and det[0, 5] == pytest.approx(0.217)
    r = _unmold(det)
    assert r.rois.tolist() == [[0, 0, 3, 10]] and r.class_ids.tolist() == [77]
    assert r.masks.shape == (1, *HW) and r.masks[0].sum() == 30 and r.masks[0, :3, :10].all()


@pytest.mark.parametrize(
    ("roi", "expected"),
    [
        ((100, -20, 400, 300), lambda b: b[0] == 0 and b[1] == 0),  # top-left corner
        ((100, 800, 400, 1100), lambda b: b[0] == 0 and b[3] == 640),  # top-right
        ((700, -20, 950, 300), lambda b: b[2] == 426 and b[1] == 0),  # bottom-left
        ((700, 800, 950, 1100), lambda b: b[2] == 426 and b[3] == 640),  # bottom-right
        ((-50, -50, 1100, 1100), lambda b: list(b) == [0, 0, 426, 640]),  # the whole window
    ],
)
def test_boxes_clipped_at_each_window_edge_land_on_the_image_edge(roi, expected):
    r = _unmold(_detect([roi]))
    assert len(r.rois) == 1 and expected(r.rois[0]), r.rois[0]
    y1, x1, y2, x2 = r.rois[0]
    assert r.masks[0].sum() == (y2 - y1) * (x2 - x1) and r.masks[0, y1:y2, x1:x2].all()  # mask 0.8 fills the box


def test_collapsed_boxes_in_the_padding_become_one_pixel_lines_and_are_kept():
    """Boxes wholly in the padding collapse onto the window border (zero height in normalized
    coordinates); unmolding adds 1 to y2/x2, so each is a 1-pixel line (a point at a corner) and stays."""
    # x: 100 and 300 molded px -> 100 * 639/1023 = 62.5 -> 62 and 300 * 639/1023 + 1 = 188.4 -> 188
    rois = [(10, 100, 60, 300), (900, 100, 1000, 300), (10, -30, 60, -5), (900, 1030, 1000, 1100)]
    det = _detect(rois)
    assert int((det[:, 4] != 0).sum()) == 4  # zero-area boxes overlap nothing in TF's NMS
    r = _unmold(det)
    got = sorted(map(tuple, r.rois.tolist()))
    assert got == sorted([(0, 62, 1, 188), (425, 62, 426, 188), (0, 0, 1, 1), (425, 639, 426, 640)])
    assert all(m.sum() == 1 * ((b[2] - b[0]) * (b[3] - b[1])) for m, b in zip(r.masks, r.rois))


def test_zero_area_after_rounding_is_dropped_only_when_flipped():
    """matterport drops boxes whose pixel area is <= 0; with y2/x2 exclusive that needs a flipped box
    (y2 < y1), which the clip never makes from a well-formed ROI: every well-formed box survives."""
    det = np.zeros((3, 6), np.float32)
    win = norm_boxes(np.asarray(WINDOW), (S, S))
    det[0] = [win[0], win[1], win[0], win[1], 77, 0.3]  # collapsed point at the corner: kept (0,0,1,1)
    det[1] = [0.5, 0.5, 0.4, 0.6, 5, 0.25]  # flipped in y: area <= 0, dropped
    det[2] = [0.5, 0.5, 0.5000001, 0.5000001, 9, 0.21]  # sub-pixel: rounds to a 1- or 2-pixel box, kept
    r = _unmold(det, np.full((3, 28, 28), 0.8, np.float32))
    assert r.class_ids.tolist() == [77, 9] and r.rois[0].tolist() == [0, 0, 1, 1]
    y1, x1, y2, x2 = r.rois[1]
    assert 1 <= y2 - y1 <= 2 and 1 <= x2 - x1 <= 2


def test_mask_above_threshold_everywhere_fills_its_box():
    """A 28x28 mask whose minimum is above 0.5, on a box larger than 28 px: skimage's clip keeps the box's
    border rows and columns (the zero-outside zoom alone would darken them below 0.5)."""
    det = _detect([(300, 300, 500, 500)])
    mask = np.full((1, 28, 28), 0.6, np.float32)
    mask[0, 10:18, 10:18] = 0.95
    r = _unmold(det, mask)
    y1, x1, y2, x2 = r.rois[0]
    assert (y2 - y1) > 28 and r.masks[0, y1:y2, x1:x2].all()
    assert not (zoom_linear(mask[0], (y2 - y1, x2 - x1)) >= 0.5).all()  # what the unclipped zoom gave
