"""COCO ground-truth reader: mask formats, ids, completion of missing fields, image lookup, bad files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from masklab.data.coco import CocoGroundTruth, annotation_to_rle
from masklab.errors import DatasetError
from masklab.structures.masks import encode_rle

H, W = 30, 40


def _mask(y0, y1, x0, x1) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def _uncompressed(mask: np.ndarray) -> dict:
    flat = mask.T.reshape(-1)
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0] + counts  # COCO RLE starts with a run of zeros
    return {"size": [H, W], "counts": counts}


def _data(**over) -> dict:
    d = {
        "images": [{"id": 5, "file_name": "a.png", "width": W, "height": H},
                   {"id": 9, "file_name": "sub/b.png", "width": W, "height": H}],
        "categories": [{"id": 2, "name": "cell"}, {"id": 40, "name": "debris"}],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 2, "segmentation": [[2, 3, 12, 3, 12, 13, 2, 13]]},
            {"id": 2, "image_id": 5, "category_id": 40, "segmentation": encode_rle(_mask(20, 25, 30, 38)[None])[0]},
            {"id": 3, "image_id": 5, "category_id": 2, "iscrowd": 1, "segmentation": _uncompressed(_mask(0, 6, 20, 30))},
        ],
    }
    d.update(over)
    return d


def test_masks_from_polygon_compressed_and_uncompressed_rle():
    gt = CocoGroundTruth.from_dict(_data())
    inst = gt.instances(5)
    assert inst.labels == ("cell", "debris", "cell")
    assert inst.class_ids.tolist() == [2, 40, 2]  # the dataset's own (non-contiguous) ids
    assert inst.extra["iscrowd"].tolist() == [False, False, True]
    assert inst.extra["annotation_id"].tolist() == [1, 2, 3]
    assert np.array_equal(inst.masks[1], _mask(20, 25, 30, 38))
    assert np.array_equal(inst.masks[2], _mask(0, 6, 20, 30))
    # The polygon 2..12 x 3..13 covers the 10x10 pixels inside it (pycocotools' rasteriser).
    assert np.array_equal(inst.masks[0], _mask(3, 13, 2, 12))
    # Missing bbox/area were completed from the masks; boxes are xyxy pixels.
    anns = gt.annotations(5)
    assert [a["area"] for a in anns] == [100.0, 40.0, 60.0]
    np.testing.assert_allclose(inst.boxes[1], [30, 20, 38, 25])
    assert gt.instances(9).masks.shape == (0, H, W) and len(gt.instances(9).extra["iscrowd"]) == 0
    assert gt.categories == {2: "cell", 40: "debris"} and gt.category_id("debris") == 40
    assert gt.coco_api().getAnnIds(imgIds=[5]) == [1, 2, 3]


def test_given_bbox_and_area_are_kept_and_missing_ids_numbered():
    d = _data()
    d["annotations"][0].update(bbox=[1.5, 2.5, 10, 11], area=123.0)
    d["annotations"].append({"image_id": 9, "category_id": 2, "segmentation": [[0, 0, 5, 0, 5, 5]]})
    gt = CocoGroundTruth.from_dict(d)
    assert gt.annotations(5)[0]["bbox"] == [1.5, 2.5, 10, 11] and gt.annotations(5)[0]["area"] == 123.0
    assert gt.annotations(9)[0]["id"] == 4
    assert "id" not in d["annotations"][-1]  # the input dict is not modified


def test_image_files_are_found_like_coco(tmp_path):
    img = np.zeros((H, W, 3), np.uint8)
    (tmp_path / "val.json").write_text(json.dumps(_data()))
    # 1. relative to the JSON's folder
    (tmp_path / "sub").mkdir()
    Image.fromarray(img).save(tmp_path / "sub" / "b.png")
    gt = CocoGroundTruth.load(tmp_path / "val.json")
    assert gt.image_path(9) == tmp_path / "sub" / "b.png"
    # 2. in the sibling folder named like the JSON (val.json -> val/)
    (tmp_path / "val").mkdir()
    Image.fromarray(img).save(tmp_path / "val" / "a.png")
    assert gt.image_path(5) == tmp_path / "val" / "a.png"
    assert gt.load_image(5).size_hw == (H, W)
    # 3. --images DIR wins, and only it is searched
    other = tmp_path / "elsewhere"
    other.mkdir()
    Image.fromarray(img).save(other / "a.png")
    gt2 = CocoGroundTruth.load(tmp_path / "val.json", images_dir=other)
    assert gt2.image_path(5) == other / "a.png"
    with pytest.raises(DatasetError, match="elsewhere/sub/b.png"):
        gt2.image_path(9)
    # A file of another size than the JSON says is refused.
    Image.fromarray(np.zeros((H + 1, W, 3), np.uint8)).save(other / "a.png")
    with pytest.raises(DatasetError, match="the JSON says 40x30"):
        gt2.load_image(5)


def test_missing_image_file_names_every_place_looked(tmp_path):
    (tmp_path / "val.json").write_text(json.dumps(_data()))
    gt = CocoGroundTruth.load(tmp_path / "val.json")
    with pytest.raises(DatasetError) as e:
        gt.image_path(5)
    assert str(tmp_path / "a.png") in str(e.value) and str(tmp_path / "val" / "a.png") in str(e.value)


def _set(path, value):
    def change(d):
        target = d
        for k in path[:-1]:
            target = target[k]
        if value is _DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value
    return change


_DELETE = object()


@pytest.mark.parametrize(
    "change, message",
    [
        (_set(["annotations", 0, "category_id"], 3), "category_id 3 is not in 'categories'"),
        (_set(["annotations", 0, "image_id"], 6), "image_id 6 is not in 'images'"),
        (_set(["annotations", 0, "segmentation"], [[1, 1, 5, 5]]), "3 points"),
        (_set(["annotations", 0, "segmentation"], _DELETE), "no 'segmentation'"),
        (_set(["annotations", 1, "segmentation", "size"], [10, 10]), "does not match"),
        (_set(["annotations", 1, "id"], 1), "unique"),
        (_set(["categories", 1, "name"], "cell"), "repeated: \\['cell'\\]"),
        (_set(["images", 0, "width"], "40"), "integer \\['width'\\]"),
        (_set(["images", 1, "id"], 5), "duplicate image id 5"),
        (_set(["categories"], _DELETE), "missing or not a list: \\['categories'\\]"),
    ],
)
def test_malformed_sets_are_refused_with_the_reason(change, message):
    d = _data()
    change(d)
    with pytest.raises(DatasetError, match=message):
        CocoGroundTruth.from_dict(d)


def test_bad_files(tmp_path):
    with pytest.raises(DatasetError, match="no such COCO JSON"):
        CocoGroundTruth.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        CocoGroundTruth.load(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(DatasetError, match="expected a COCO JSON object"):
        CocoGroundTruth.load(tmp_path / "list.json")


def test_annotation_to_rle_accepts_str_and_bytes_counts():
    rle = encode_rle(_mask(1, 4, 1, 4)[None])[0]
    from pycocotools import mask as mask_utils

    for counts in (rle["counts"], rle["counts"].encode("ascii")):
        out = annotation_to_rle({"size": [H, W], "counts": counts}, H, W)
        assert mask_utils.area(out) == 9
