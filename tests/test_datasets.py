"""Dataset readers (COCO, VIA, LabelMe, VOC, YOLO-seg), validate and convert, on fixtures written here."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from masklab.data.convert import convert_dataset
from masklab.data.dataset import open_dataset
from masklab.data.readers import detect_format
from masklab.data.shapes import SHAPE_CLASSES, write_shapes
from masklab.data.validate import validate_dataset
from masklab.errors import DatasetError, UsageError
from masklab.structures.instances import Instances


def _save_rgb(path, h=40, w=60, value=120):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path)
    return path


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes") / "train"
    write_shapes(root, n=4, size=64, seed=11)
    return root


# -- shapes + COCO ----------------------------------------------------------------------------------
def test_shapes_dataset_content(shapes):
    ds = open_dataset(shapes)
    assert ds.format == "coco" and ds.class_names == SHAPE_CLASSES and len(ds) == 4
    s = ds[0]
    assert s.image.shape == (64, 64, 3) and s.image.dtype == np.uint8
    assert len(s.target) >= 1
    assert set(s.target.class_ids.tolist()) <= {1, 2, 3}
    for m, lab, cid in zip(s.target.masks, s.target.labels, s.target.class_ids):
        assert SHAPE_CLASSES[cid - 1] == lab
        assert m.sum() >= 20
        # the shape's pixels share one colour, different from the background corner's
        colours = np.unique(s.image[m].reshape(-1, 3), axis=0)
        assert len(colours) <= 3  # anti-aliasing-free cv2 fills: one colour (+ rounding)
    # the same seed writes the same dataset
    again = shapes.parent / "again"
    write_shapes(again, n=4, size=64, seed=11)
    assert (again / "annotations.json").read_text() == (shapes / "annotations.json").read_text()


def test_coco_polygons_crowd_and_noncontiguous_ids(tmp_path):
    _save_rgb(tmp_path / "val" / "a.png", 40, 60)
    doc = {
        "images": [{"id": 7, "file_name": "a.png", "height": 40, "width": 60}],
        "categories": [{"id": 3, "name": "cat"}, {"id": 90, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 90, "segmentation": [[10, 10, 30, 10, 30, 20, 10, 20]], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 3, "iscrowd": 1,
             "segmentation": {"size": [40, 60], "counts": [0, 40 * 5, 40 * 55]}},
        ],
    }
    (tmp_path / "val.json").write_text(json.dumps(doc))  # images in the sibling folder named like the JSON
    assert detect_format(tmp_path / "val.json") == "coco"
    ds = open_dataset(tmp_path / "val.json")
    assert ds.class_names == ("cat", "dog")
    s = ds[0]
    assert s.image_id == 7
    assert s.target.labels == ("dog", "cat") and s.target.class_ids.tolist() == [2, 1]
    assert s.target.extra["iscrowd"].tolist() == [False, True]
    assert s.target.masks[0].sum() == 20 * 10
    assert s.target.masks[1][:, :5].all() and not s.target.masks[1][:, 5:].any()


def test_training_input_drops_crowd_and_flips_consistently(shapes):
    import torch

    from masklab.training.data import augment_transform, to_model_input

    ds = open_dataset(shapes)
    s = ds[1]
    img, tgt = to_model_input(s, augment_transform(False))
    assert img.dtype == torch.float32 and img.shape == (3, 64, 64) and float(img.max()) <= 1.0
    assert tgt["labels"].tolist() == s.target.class_ids.tolist()
    torch.manual_seed(0)
    flips = 0
    for _ in range(6):
        img2, t2 = to_model_input(s, augment_transform(True))
        flipped = torch.equal(t2["masks"], torch.from_numpy(s.target.masks[:, :, ::-1].copy()).to(t2["masks"].dtype))
        flips += flipped
        ref = s.target.masks[:, :, ::-1] if flipped else s.target.masks
        # the box always encloses its (possibly flipped) mask
        for b, m in zip(t2["boxes"].numpy(), ref):
            ys, xs = np.nonzero(m)
            assert b[0] <= xs.min() + 0.5 and b[2] >= xs.max() + 0.5 and b[1] <= ys.min() + 0.5 and b[3] >= ys.max() + 0.5
    assert 0 < flips < 6


# -- VIA --------------------------------------------------------------------------------------------
def test_via_balloon_layout(tmp_path):
    _save_rgb(tmp_path / "b1.jpg", 50, 80)
    _save_rgb(tmp_path / "b2.jpg", 50, 80)
    via = {
        "b1.jpg1234": {"filename": "b1.jpg", "size": 1234, "file_attributes": {}, "regions": {
            "0": {"shape_attributes": {"name": "polygon", "all_points_x": [10, 40, 40, 10], "all_points_y": [5, 5, 25, 25]},
                  "region_attributes": {}},
            "1": {"shape_attributes": {"name": "circle", "cx": 60, "cy": 30, "r": 8}, "region_attributes": {}},
        }},
        "b2.jpg99": {"filename": "b2.jpg", "size": 99, "file_attributes": {}, "regions": {}},
    }
    (tmp_path / "via_region_data.json").write_text(json.dumps(via))
    assert detect_format(tmp_path) == "via"
    ds = open_dataset(tmp_path)
    assert ds.class_names == ("object",) and len(ds) == 2
    s = ds[0]
    assert len(s.target) == 2
    poly, circ = s.target.masks
    assert 500 <= poly.sum() <= 31 * 21 and poly[15, 25] and not poly[30, 25]
    assert circ[30, 60] and abs(int(circ.sum()) - np.pi * 64) < 40
    assert len(ds[1].target) == 0  # an image without regions is a background image


# -- LabelMe ----------------------------------------------------------------------------------------
def test_labelme_folder_round_trip(tmp_path):
    from masklab.io.formats.labelme import write_labelme

    m = np.zeros((2, 40, 60), bool)
    m[0, 5:20, 5:25] = True
    m[1, 20:35, 30:55] = True
    m[1, 25:30, 40:45] = False  # a hole
    inst = Instances.from_masks(m, class_ids=[1, 2], labels=["leaf", "bug"])
    img = _save_rgb(tmp_path / "x.png", 40, 60)
    write_labelme(tmp_path / "x.json", inst, image_path=img)
    assert detect_format(tmp_path) == "labelme"
    s = open_dataset(tmp_path)[0]
    assert sorted(s.target.labels) == ["bug", "leaf"]
    for mask, lab in zip(s.target.masks, s.target.labels):
        assert _iou(mask, m[["leaf", "bug"].index(lab)]) > 0.9
    bug = s.target.masks[list(s.target.labels).index("bug")]
    assert not bug[27, 42]  # the hole survived


# -- Pascal VOC -------------------------------------------------------------------------------------
def _palette_png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr.astype(np.uint8), mode="P")
    im.putpalette([v for i in range(256) for v in (i, 255 - i, (i * 7) % 256)])
    im.save(path)


def test_voc_instances_and_classes(tmp_path):
    obj = np.zeros((30, 40), np.uint8)
    cls = np.zeros((30, 40), np.uint8)
    obj[2:10, 2:12], cls[2:10, 2:12] = 1, 15  # person
    obj[15:25, 20:35], cls[15:25, 20:35] = 2, 12  # dog
    obj[14, 19:36], cls[14, 19:36] = 255, 255  # "difficult" border: not part of any object
    _palette_png(tmp_path / "SegmentationObject" / "2007_000001.png", obj)
    _palette_png(tmp_path / "SegmentationClass" / "2007_000001.png", cls)
    _save_rgb(tmp_path / "JPEGImages" / "2007_000001.jpg", 30, 40)
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations" / "2007_000001.xml").write_text(
        "<annotation><object><name>person</name></object><object><name>dog</name></object></annotation>"
    )
    assert detect_format(tmp_path) == "voc"
    ds = open_dataset(tmp_path)
    s = ds[0]
    assert s.target.labels == ("person", "dog")
    assert s.target.masks[0].sum() == 8 * 10 and s.target.masks[1].sum() == 10 * 15
    assert s.target.boxes[1].tolist() == [20, 15, 35, 25]


def test_voc_class_disagreeing_with_xml_is_reported(tmp_path):
    obj = np.zeros((10, 10), np.uint8)
    obj[2:5, 2:5] = 1
    cls = np.where(obj == 1, 8, 0)  # cat
    _palette_png(tmp_path / "SegmentationObject" / "a.png", obj)
    _palette_png(tmp_path / "SegmentationClass" / "a.png", cls)
    _save_rgb(tmp_path / "JPEGImages" / "a.jpg", 10, 10)
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations" / "a.xml").write_text("<annotation><object><name>dog</name></object></annotation>")
    report = validate_dataset(tmp_path)
    assert [p.kind for p in report.problems] == ["reader"]
    assert "'cat' in SegmentationClass but 'dog' in the XML" in report.problems[0].message
    with pytest.raises(DatasetError, match="masklab validate"):
        open_dataset(tmp_path)


# -- YOLO-seg ---------------------------------------------------------------------------------------
def test_yolo_data_yaml(tmp_path):
    _save_rgb(tmp_path / "images" / "train" / "p.png", 50, 100)
    _save_rgb(tmp_path / "images" / "train" / "empty.png", 50, 100)
    (tmp_path / "labels" / "train").mkdir(parents=True)
    # a rectangle x 10..50, y 5..25 (normalised by W=100, H=50), class 1 = "screw"
    (tmp_path / "labels" / "train" / "p.txt").write_text("1 0.1 0.1 0.5 0.1 0.5 0.5 0.1 0.5\n")
    (tmp_path / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/train\nnames:\n  0: nut\n  1: screw\n")
    assert detect_format(tmp_path) == "yolo"
    ds = open_dataset(tmp_path / "data.yaml")
    assert ds.class_names == ("nut", "screw") and len(ds) == 2
    by_name = {ds.gt.images[i].file_name.rsplit("/", 1)[-1]: ds[k] for k, i in enumerate(ds.image_ids)}
    s = by_name["p.png"]
    assert s.target.labels == ("screw",)
    x1, y1, x2, y2 = s.target.boxes[0]
    assert abs(x1 - 10) <= 1 and abs(y1 - 5) <= 1 and abs(x2 - 51) <= 1 and abs(y2 - 26) <= 1
    assert len(by_name["empty.png"].target) == 0
    report = validate_dataset(tmp_path)
    assert [p.kind for p in report.problems] == ["no_examples"] and "nut" in report.problems[0].where


def test_yolo_bad_class_index_is_reported(tmp_path):
    _save_rgb(tmp_path / "images" / "train" / "p.png", 20, 20)
    (tmp_path / "labels" / "train").mkdir(parents=True)
    (tmp_path / "labels" / "train" / "p.txt").write_text("5 0.1 0.1 0.5 0.1 0.5 0.5\n")
    (tmp_path / "data.yaml").write_text("train: images/train\nnames: [a]\n")
    report = validate_dataset(tmp_path)
    assert any(p.kind == "reader" and "class index 5" in p.message for p in report.problems)


# -- validate ---------------------------------------------------------------------------------------
def test_validate_reports_every_awkward_case(tmp_path):
    _save_rgb(tmp_path / "ok.png", 40, 60)
    _save_rgb(tmp_path / "small.png", 20, 20)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    square = [5, 5, 15, 5, 15, 15, 5, 15]
    doc = {
        "images": [
            {"id": 1, "file_name": "ok.png", "height": 40, "width": 60},
            {"id": 2, "file_name": "gone.png", "height": 40, "width": 60},
            {"id": 3, "file_name": "small.png", "height": 40, "width": 60},
            {"id": 4, "file_name": "broken.png", "height": 40, "width": 60},
        ],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 5, "name": "never"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [square], "bbox": [5, 5, 10, 10]},
            {"id": 2, "image_id": 1, "category_id": 2, "segmentation": [[1, 1, 5, 5]]},  # 2 points
            {"id": 3, "image_id": 1, "category_id": 1, "segmentation": [[100, 100, 110, 100, 110, 110]]},  # outside: empty
            {"id": 4, "image_id": 1, "category_id": 2, "segmentation": [square], "bbox": [50, 30, 20, 20]},  # box leaves
            {"id": 5, "image_id": 1, "category_id": 9, "segmentation": [square]},  # unknown category
            {"id": 5, "image_id": 1, "category_id": 1, "segmentation": [square]},  # duplicate id
            {"id": 7, "image_id": 99, "category_id": 1, "segmentation": [square]},  # unknown image
        ],
    }
    (tmp_path / "annotations.json").write_text(json.dumps(doc))
    report = validate_dataset(tmp_path)
    assert report.counts() == {
        "missing_image": 1, "size_mismatch": 1, "unreadable_image": 1, "bad_polygon": 1, "empty_mask": 1,
        "box_outside": 1, "unknown_category": 1, "duplicate_id": 1, "unknown_image": 1, "no_examples": 1,
    }
    assert report.per_class == {"a": {"instances": 3, "images": 1}, "b": {"instances": 2, "images": 1},
                                "never": {"instances": 0, "images": 0}}
    text = report.render()
    assert "gone.png" in text and "never" in text and "at least 3 points" in text
    # the CLI: exit code 1 when problems are found, 0 on a clean set
    from masklab.cli import main

    assert main(["validate", str(tmp_path)]) == 1
    assert main(["validate", str(tmp_path.parent / "nothing")]) == 1  # unreadable: a reader problem


def test_validate_clean_shapes_and_cli(shapes, capsys):
    from masklab.cli import main

    assert validate_dataset(shapes).ok
    assert main(["validate", str(shapes)]) == 0
    out = capsys.readouterr().out
    assert "no problems found" in out and "square" in out


def test_detect_format_explains(tmp_path):
    with pytest.raises(DatasetError, match="found no dataset"):
        detect_format(tmp_path)
    with pytest.raises(DatasetError, match="no such file"):
        detect_format(tmp_path / "missing")


# -- convert ----------------------------------------------------------------------------------------
def _by_image(ds):
    out = {}
    for k in range(len(ds)):
        s = ds[k]
        name = ds.gt.images[s.image_id].file_name.rsplit("/", 1)[-1]
        out[name] = s.target
    return out


@pytest.mark.parametrize("via", ["yolo", "labelme"])
def test_convert_round_trip_keeps_instances(shapes, tmp_path, via):
    mid = convert_dataset(shapes, tmp_path / via, to=via)
    back = convert_dataset(mid.path if via == "yolo" else tmp_path / via, tmp_path / "back", to="coco")
    assert back.images == 4 and back.instances == mid.instances
    a, b = _by_image(open_dataset(shapes)), _by_image(open_dataset(tmp_path / "back"))
    assert set(a) == set(b)
    assert sum(len(t) for t in a.values()) == mid.instances > 0  # the shapes set has objects: the loop compares masks
    for name, ta in a.items():
        tb = b[name]
        assert len(tb) == len(ta), name
        for m, lab in zip(ta.masks, ta.labels):
            best = max(_iou(m, m2) for m2, l2 in zip(tb.masks, tb.labels) if l2 == lab)
            assert best > 0.8, (name, lab, best)
    names = open_dataset(tmp_path / "back").class_names
    # YOLO keeps the class list; LabelMe has none (classes come in order of first appearance)
    assert names == SHAPE_CLASSES if via == "yolo" else sorted(names) == sorted(SHAPE_CLASSES)


def test_convert_refuses_non_empty_target(shapes, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty"):
        convert_dataset(shapes, tmp_path / "x", to="coco")


def test_cli_format_choices_are_the_readers_and_writers_own():
    from masklab.cli import convert as cli_convert
    from masklab.cli import validate as cli_validate
    from masklab.data.convert import TARGETS
    from masklab.data.readers import FORMATS

    assert cli_validate.DATASET_FORMATS == FORMATS and cli_convert.TARGETS == TARGETS
