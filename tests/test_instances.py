import numpy as np
import pytest

from masklab import Instances
from masklab.structures.masks import decode_rle, encode_rle, masks_to_boxes, paste_masks


def _two(h=20, w=30):
    m = np.zeros((2, h, w), bool)
    m[0, 2:6, 3:9] = True  # 4 x 6 = 24 px
    m[1, 10:20, 0:10] = True  # 100 px
    return Instances.from_masks(m, class_ids=[1, 17], labels=["person", "cat"], scores=[0.9, 0.6])


def test_fields_dtypes_and_boxes():
    inst = _two()
    assert inst.boxes.dtype == np.float32 and inst.masks.dtype == bool
    assert inst.scores.dtype == np.float32 and inst.class_ids.dtype == np.int64
    np.testing.assert_array_equal(inst.boxes, [[3, 2, 9, 6], [0, 10, 10, 20]])
    assert inst.image_size == (20, 30) and len(inst) == 2


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"scores": [0.1]}, ValueError, "2 entries"),
        ({"labels": ["a"]}, ValueError, "2 entries"),
        ({"masks": np.zeros((2, 5, 5), bool)}, ValueError, "expected shape"),
        ({"masks": np.zeros((2, 20, 30), np.uint8)}, TypeError, "bool"),
        ({"boxes": np.zeros((2, 3))}, ValueError, r"\(N, 4\)"),
        ({"image_size": (0, 30)}, ValueError, "positive"),
    ],
)
def test_construction_errors(kwargs, exc, match):
    base = dict(
        boxes=np.zeros((2, 4)), masks=np.zeros((2, 20, 30), bool), scores=[0.5, 0.5], class_ids=[1, 2],
        labels=["a", "b"], image_size=(20, 30),
    )
    base.update(kwargs)
    with pytest.raises(exc, match=match):
        Instances(**base)


def test_selection():
    inst = _two()
    assert inst[1].labels == ("cat",)
    assert inst[np.array([False, True])].labels == ("cat",)
    assert inst[[1, 0]].labels == ("cat", "person")
    assert len(inst[np.array([], dtype=np.int64)]) == 0
    assert inst.filter(min_score=0.7).labels == ("person",)
    assert inst.filter(classes=["cat"]).labels == ("cat",)
    with pytest.raises(IndexError):
        inst[np.array([True])]
    assert "person: 1" in repr(inst)


def test_empty_and_cat():
    e = Instances.empty((5, 7))
    assert len(e) == 0 and e.masks.shape == (0, 5, 7)
    assert e.to_mrcnn(["BG", "a"])["masks"].shape == (5, 7, 0)
    assert e.to_coco(1) == [] and e.to_dict() == []
    both = Instances.cat([_two(), _two()])
    assert len(both) == 4


def test_measurements():
    inst = _two()
    np.testing.assert_array_equal(inst.areas(), [24, 100])
    np.testing.assert_allclose(inst.centroids()[0], [6.0, 4.0])  # cols 3..8 -> mean 5.5 + .5; rows 2..5
    # A 4x6 pixel block's contour through pixel centres: 2*(3+5) = 16.
    np.testing.assert_allclose(inst.perimeters()[0], 16.0)
    m = inst.measurements()[1]
    assert m["label"] == "cat" and m["area_px"] == 100 and m["bbox_xyxy"] == [0, 10, 10, 20]


def test_perimeters_on_crops_equal_the_whole_mask_at_borders_and_holes():
    """mask_perimeters traces each mask inside its tight box: the same lengths as OpenCV on the whole mask,
    for blobs with holes and blobs cut by every edge of the image."""
    import cv2

    from masklab.structures.masks import mask_perimeters

    rng = np.random.default_rng(5)
    masks = np.zeros((40, 37, 53), bool)
    for i, m in enumerate(masks):
        for _ in range(int(rng.integers(1, 4))):  # rectangles that may cross any border
            y, x = rng.integers(-8, 37), rng.integers(-8, 53)
            m[max(y, 0) : y + rng.integers(1, 20), max(x, 0) : x + rng.integers(1, 20)] = True
        if i % 3 == 0:
            m[rng.integers(0, 37), :] = False  # a cut, and (below) a hole
        if i % 4 == 0:
            m[rng.integers(1, 36), rng.integers(1, 52)] = False
    masks[-1] = False  # an empty mask: 0
    masks[-2] = True  # the whole image
    whole = [
        sum(cv2.arcLength(c, True) for c in cv2.findContours(m.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)[0])
        for m in masks
    ]
    np.testing.assert_array_equal(mask_perimeters(masks), whole)
    assert mask_perimeters(masks)[-2] == 2 * (36 + 52)


def test_an_empty_mask_has_a_null_centroid_and_strict_json(tmp_path):
    """An untrained or weak head can keep a box whose mask is empty: no NaN may reach JSON or CSV."""
    import json

    from masklab.io.formats.measurements import write_measurements_csv

    inst = _two()
    inst.masks[1] = False
    m = inst.measurements()
    assert m[1]["centroid_xy"] == [None, None] and m[1]["area_px"] == 0
    assert m[0]["centroid_xy"] == [6.0, 4.0]
    d = inst.to_dict()
    json.dumps(d, allow_nan=False)  # raises on NaN
    assert d[1]["centroid_xy"] == [None, None]
    csv = write_measurements_csv(tmp_path / "m.csv", [{"image": "x.png", "instances": d}]).read_text()
    assert "nan" not in csv.lower() and len(csv.splitlines()) == 3


def test_to_mrcnn_matches_tutorial_layout():
    inst = _two()
    names = ["BG", "person", "bicycle", "cat"]
    r = inst.to_mrcnn(names)
    assert r["rois"].dtype == np.int32 and r["rois"].tolist() == [[2, 3, 6, 9], [10, 0, 20, 10]]
    assert r["masks"].shape == (20, 30, 2) and r["masks"].dtype == bool
    assert r["class_ids"].tolist() == [1, 3] and r["class_ids"].dtype == np.int32
    assert r["scores"].dtype == np.float32
    np.testing.assert_array_equal(r["masks"][..., 1], inst.masks[1])
    with pytest.raises(KeyError, match="cat"):
        inst.to_mrcnn(["BG", "person"])


def test_rle_and_dict_round_trip():
    inst = _two()
    rles = encode_rle(inst.masks)
    assert isinstance(rles[0]["counts"], str) and rles[0]["size"] == [20, 30]
    np.testing.assert_array_equal(decode_rle(rles, (20, 30)), inst.masks)
    back = Instances.from_dict(inst.to_dict(), inst.image_size)
    np.testing.assert_array_equal(back.masks, inst.masks)
    assert back.labels == inst.labels
    coco = inst.to_coco(7)
    assert coco[0]["bbox"] == [3.0, 2.0, 6.0, 4.0] and coco[1]["category_id"] == 17


def test_masks_to_boxes_empty_mask():
    m = np.zeros((1, 4, 4), bool)
    np.testing.assert_array_equal(masks_to_boxes(m), [[0, 0, 0, 0]])


def test_paste_masks_matches_torchvision():
    import torch
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    g = torch.Generator().manual_seed(0)
    probs = torch.rand(12, 1, 28, 28, generator=g)
    xy = torch.rand(12, 2, generator=g) * torch.tensor([110.0, 80.0]) - 10  # some boxes cross the border
    wh = torch.rand(12, 2, generator=g) * 80 + 12
    boxes = torch.cat([xy, xy + wh], dim=1)
    ref = paste_masks_in_image(probs, boxes, (90, 120), padding=1)[:, 0] > 0.5
    ours = paste_masks(probs, boxes, (90, 120))
    np.testing.assert_array_equal(ours, ref.numpy())
    assert paste_masks(probs[:0], boxes[:0], (5, 6)).shape == (0, 5, 6)


def test_tight_box_is_the_crop_of_the_true_pixels():
    from masklab.structures.masks import masks_to_boxes, tight_box

    m = np.zeros((5, 7), bool)
    assert tight_box(m) is None
    m[4, 6] = True  # a corner pixel: x1, y1 are exclusive
    assert tight_box(m) == (6, 4, 7, 5)
    m[1, 2] = True
    x0, y0, x1, y1 = tight_box(m)
    assert (x0, y0, x1, y1) == (2, 1, 7, 5) and m[y0:y1, x0:x1].sum() == m.sum()
    assert masks_to_boxes(np.stack([m, np.zeros_like(m)])).tolist() == [[2, 1, 7, 5], [0, 0, 0, 0]]
