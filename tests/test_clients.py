"""Files masklab writes for other tools, read back by those tools' own loaders (ultralytics, LabelMe).

No masklab reader is used to judge a file here: the client decides whether it is right.
"""

import json

import numpy as np
import pytest
from PIL import Image

from masklab.data.convert import convert_dataset
from masklab.io.formats import OutputWriter
from masklab.structures.instances import Instances

H, W = 96, 128
CLASSES = ["ring", "blob", "sliver"]


def _source_masks(seed: int):
    """One image's objects: a ring (a hole), a blob in two separate parts, a 5-px-wide sliver, and a
    blob that overlaps the ring. Returns (bool (N, H, W), labels)."""
    yy, xx = np.mgrid[:H, :W]
    cx = 40 + 4 * seed
    d = np.hypot(yy - 45, xx - cx)
    m = np.zeros((4, H, W), bool)
    m[0] = (d < 26) & (d >= 11)  # ring with a hole
    m[1, 8:24, 80:100] = True
    m[1, 60:80, 100:120] = True  # second part of the same blob
    m[2] = (np.abs(xx - 0.5 * yy - 70) < 2.5) & (yy >= 30) & (yy < 90)  # a slanted sliver, 5 px wide
    m[3, 55:75, cx + 10 : cx + 35] = True  # overlaps the ring's lower right
    return m, ["ring", "blob", "sliver", "blob"]


@pytest.fixture
def coco_source(tmp_path):
    """A small COCO dataset (masks as RLE) of two 96 x 128 images; returns (folder, {file: (masks, labels)})."""
    from pycocotools import mask as mask_utils

    root = tmp_path / "src"
    (root / "images").mkdir(parents=True)
    images, anns, truth = [], [], {}
    rng = np.random.default_rng(0)
    for i in range(2):
        name = f"im{i}.png"
        Image.fromarray((rng.random((H, W, 3)) * 255).astype(np.uint8)).save(root / "images" / name)
        images.append({"id": i + 1, "file_name": f"images/{name}", "height": H, "width": W})
        masks, labels = _source_masks(i)
        truth[name] = (masks, labels)
        for m, lab in zip(masks, labels):
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            x, y, w, h = mask_utils.toBbox(rle).tolist()
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": CLASSES.index(lab) + 1,
                         "segmentation": rle, "area": int(m.sum()), "bbox": [x, y, w, h], "iscrowd": 0})
    cats = [{"id": k + 1, "name": n} for k, n in enumerate(CLASSES)]
    (root / "annotations.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root, truth


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """Run from an unrelated working directory, with ultralytics' settings kept in tmp and offline."""
    cwd = tmp_path / "somewhere_else"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    return cwd


def _ultralytics_labels(data_yaml):
    """ultralytics' own loaders: ``check_det_dataset`` then ``YOLODataset`` (task segment) on the train
    split; returns {image file name: list of (class index, segment points (K, 2) normalised)}."""
    pytest.importorskip("ultralytics")
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(str(data_yaml), autodownload=False)
    ds = YOLODataset(img_path=data["train"], data=data, task="segment", imgsz=128, augment=False, cache=False)
    out = {}
    for lab in ds.labels:
        name = lab["im_file"].rsplit("/", 1)[-1]
        out[name] = list(zip(lab["cls"].reshape(-1).astype(int).tolist(), lab["segments"]))
    return data, out


def _fill(segment, size):
    import cv2

    h, w = size
    m = np.zeros((h, w), np.uint8)
    cv2.fillPoly(m, [np.round(np.asarray(segment) * [w, h]).astype(np.int32).reshape(-1, 1, 2)], 1)
    return m.astype(bool)


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def test_ultralytics_loads_a_converted_dataset_from_another_folder(coco_source, tmp_path, elsewhere):
    src, truth = coco_source
    res = convert_dataset(src, tmp_path / "yolo", to="yolo")
    data, labels = _ultralytics_labels(res.path)  # a 'path: .' made ultralytics look in the current folder
    assert any("joined" in n for n in res.notes)  # the two-part blobs, said in the notes
    assert [data["names"][k] for k in sorted(data["names"])] == CLASSES
    assert set(labels) == set(truth)
    for name, (masks, names) in truth.items():
        got = labels[name]
        assert len(got) == len(masks)  # every instance
        assert [CLASSES[c] for c, _ in got] == names
        for k, ((_, seg), m) in enumerate(zip(got, masks)):
            # exact polygons (tolerance 0), filled as ultralytics does; the two-part blob (k == 1) gains the
            # one-pixel line of the bridge joining its parts (about 40 px of 720: the format's limit)
            assert _iou(_fill(seg, (H, W)), m) >= (0.9 if k == 1 else 0.97), (name, k)


def test_predictions_yolo_folder_is_a_dataset_ultralytics_trains_on(tmp_path, elsewhere):
    writer = OutputWriter(tmp_path / "run", model_name="t", viz="none", formats="yolo",
                          categories=["__background__", *CLASSES], polygon_tolerance=0)
    truth = {}
    rng = np.random.default_rng(1)
    for i in range(2):
        masks, labels = _source_masks(i)
        inst = Instances.from_masks(masks, class_ids=[CLASSES.index(n) + 1 for n in labels], labels=labels,
                                    scores=[0.9, 0.8, 0.7, 0.6])
        image = (rng.random((H, W, 3)) * 255).astype(np.uint8)
        with pytest.warns(UserWarning, match="one polygon per object"):
            writer.write(stem=f"p{i}", image_name=f"photos/p{i}.jpg", image=image, instances=inst)
        truth[f"p{i}.jpg"] = inst
    writer.finish(["p0", "p1"])
    data, labels = _ultralytics_labels(tmp_path / "run" / "yolo" / "data.yaml")
    assert set(labels) == set(truth)
    for name, inst in truth.items():
        got = labels[name]
        assert [CLASSES[c] for c, _ in got] == list(inst.labels)
        for k, ((_, seg), m) in enumerate(zip(got, inst.masks)):
            assert _iou(_fill(seg, (H, W)), m) >= (0.9 if k == 1 else 0.97), (name, k)  # k == 1: bridged parts


def _labelme_class_map(json_path):
    """LabelMe's own reading of a file: ``LabelFile`` (decodes mask shapes) + ``shapes_to_label``."""
    pytest.importorskip("labelme")
    from labelme import LabelFile
    from labelme.utils import shapes_to_label

    lf = LabelFile(str(json_path))
    doc = json.loads(json_path.read_text())
    shapes = [dict(s) for s in lf.shapes]
    cls, _ = shapes_to_label((doc["imageHeight"], doc["imageWidth"]), shapes, {n: k + 1 for k, n in enumerate(CLASSES)})
    return cls


def _painted(masks, class_ids):
    """A class map painted in order, later over earlier (class ids 1-based)."""
    out = np.zeros(masks.shape[1:], np.int32)
    for m, c in zip(masks, class_ids):
        out[m] = c
    return out


def test_labelme_own_tools_agree_on_holes_and_slivers(coco_source, tmp_path):
    src, truth = coco_source
    convert_dataset(src, tmp_path / "lm", to="labelme")
    for name, (masks, labels) in truth.items():
        cls = _labelme_class_map((tmp_path / "lm" / name).with_suffix(".json"))
        expect = _painted(masks, [CLASSES.index(n) + 1 for n in labels])
        for c in range(1, len(CLASSES) + 1):
            iou = _iou(cls == c, expect == c)
            assert iou >= 0.97, (name, CLASSES[c - 1], iou)
        assert cls[45, 40 + 4 * int(name[2])] == 0  # the ring's hole is background in LabelMe's label map
        assert (cls == CLASSES.index("sliver") + 1).sum() == (expect == CLASSES.index("sliver") + 1).sum()


def test_labelme_label_map_equals_masklab_png_label_map(tmp_path):
    """Overlapping predictions: the higher score wins in both LabelMe's label map and masklab's PNG."""
    m = np.zeros((3, H, W), bool)
    m[0, 10:60, 10:60] = True
    m[1, 30:80, 30:90] = True
    m[2, 40:50, 20:100] = True
    inst = Instances.from_masks(m, class_ids=[1, 2, 3], labels=CLASSES, scores=[0.95, 0.5, 0.7])
    writer = OutputWriter(tmp_path, model_name="t", viz="none", formats="labelme,png-masks",
                          categories=["__background__", *CLASSES])
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "x.png")
    writer.write(stem="x", image_name=str(tmp_path / "x.png"), image=np.zeros((H, W, 3), np.uint8), instances=inst)
    labelme_map = _labelme_class_map(tmp_path / "labelme" / "x.json")
    png_map = np.asarray(Image.open(tmp_path / "masks" / "x.semantic.png")).astype(np.int32)
    assert (png_map[45, 45], png_map[70, 70]) == (1, 2)  # the overlaps this test is about
    np.testing.assert_array_equal(labelme_map, png_map)


def test_coco_results_boxes_are_rounded_and_load_in_pycocotools(tmp_path):
    from pycocotools.coco import COCO

    m = np.zeros((1, H, W), bool)
    m[0, 10:40, 20:70] = True
    inst = Instances(boxes=np.array([[20.1, 10.3, 69.488, 39.9]], np.float32), masks=m, scores=[0.87654321],
                     class_ids=[1], labels=["ring"], image_size=(H, W))
    writer = OutputWriter(tmp_path, model_name="t", viz="none", formats="coco", categories=["__background__", *CLASSES])
    writer.write(stem="x", image_name="x.png", image=np.zeros((H, W, 3), np.uint8), instances=inst)
    writer.finish(["x"])
    text = (tmp_path / "coco_results.json").read_text()
    results = json.loads(text)
    assert results[0]["bbox"] == [20.1, 10.3, 49.388, 29.6]  # float32 20.1 printed as 20.100000381469727 before
    assert "0000" not in text.split('"segmentation"')[0]
    dt = COCO(str(tmp_path / "coco_images.json")).loadRes(str(tmp_path / "coco_results.json"))
    assert dt.annToMask(dt.loadAnns(dt.getAnnIds(imgIds=[1]))[0]).sum() == m.sum()


def test_convert_a_dataset_to_cvat_and_back_is_exact(coco_source, tmp_path):
    from masklab.interop import read_cvat_xml

    src, truth = coco_source
    res = convert_dataset(src, tmp_path / "cvat", to="cvat")
    got = {g.image_path.name: g for g in read_cvat_xml(res.path)}
    assert set(got) == set(truth)
    for name, (masks, labels) in truth.items():
        assert list(got[name].instances.labels) == labels
        np.testing.assert_array_equal(np.asarray(got[name].instances.masks), masks)


def test_convert_polygons_are_exact_by_default_and_tolerance_simplifies(coco_source, tmp_path):
    """A 5-px sliver kept exactly by default (it went from 300 to fewer px with the old fixed 1-px
    simplification); ``--polygon-tolerance`` still simplifies when asked."""
    from masklab.cli import main

    src, truth = coco_source
    sliver = truth["im0.png"][0][2]
    counts, ring_numbers = {}, {}
    for flag in ([], ["--polygon-tolerance", "3"]):
        out = tmp_path / f"lm{len(flag)}"
        assert main(["convert", str(src), str(out), "--to", "labelme", *flag]) == 0
        counts[len(flag)] = (_labelme_class_map(out / "im0.json") == CLASSES.index("sliver") + 1).sum()
        if not flag:
            assert counts[0] == sliver.sum()  # exact, as LabelMe itself paints it
        assert main(["convert", str(src), str(tmp_path / f"y{len(flag)}"), "--to", "yolo", *flag]) == 0
        ring_line = (tmp_path / f"y{len(flag)}" / "labels" / "train" / "im0.txt").read_text().splitlines()[0]
        ring_numbers[len(flag)] = len(ring_line.split())
    assert ring_numbers[2] < ring_numbers[0] / 2  # the ring's round contours, simplified when asked
    with pytest.raises(SystemExit):
        main(["convert", str(src), str(tmp_path / "bad"), "--to", "labelme", "--polygon-tolerance", "x"])
