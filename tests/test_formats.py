"""Every output format written by OutputWriter and read back (pycocotools, the project's readers)."""

import csv
import json
import threading

import numpy as np
import pytest
from conftest import make_scene
from PIL import Image

from masklab.errors import DatasetError, UsageError
from masklab.io.formats import (
    OutputWriter,
    read_label_maps,
    read_labelme,
    read_yolo,
    read_yolo_classes,
)
from masklab.models.categories import COCO_TORCHVISION
from masklab.structures.instances import Instances

H, W = 100, 140


def scene_instances(shift=0):
    """A donut (ring with a hole), two cats (one in two parts) and a dog: the shapes formats get wrong."""
    yy, xx = np.mgrid[:H, :W]
    d = np.hypot(yy - 50, xx - 45 - shift)
    m = np.zeros((4, H, W), bool)
    m[0] = (d < 35) & (d >= 14)
    m[1, 10:40, 95:125] = True
    m[2, 60:75, 90:105] = True
    m[2, 80:95, 115:135] = True  # second part of the same cat
    m[3, 3:12, 3:30] = True
    return Instances.from_masks(
        m, class_ids=[60, 17, 17, 18], labels=["donut", "cat", "cat", "dog"], scores=[0.9, 0.8, 0.7, 0.6]
    )


def iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


@pytest.fixture
def run_dir(tmp_path):
    """Two images written with every format, as a run would."""
    src = tmp_path / "images"
    src.mkdir()
    writer = OutputWriter(
        tmp_path / "out",
        model_name="test",
        viz="instance,semantic",
        formats="json,coco,png-masks,labelme,yolo,csv",
        categories=COCO_TORCHVISION,
        px_per_unit=2.0,
        unit="mm",
    )
    truth = {}
    for k, stem in enumerate(["a", "b"]):
        img = make_scene(H, W, seed=k)
        path = src / f"{stem}.png"
        Image.fromarray(img).save(path)
        inst = scene_instances(shift=5 * k)
        written = writer.write(stem=stem, image_name=str(path), image=img, instances=inst)
        assert sorted(written) == sorted(writer.outputs_for(stem))
        truth[stem] = (path, inst)
    finished = writer.finish(["a", "b"])
    return tmp_path / "out", writer, truth, finished


def test_overlay_side_by_side(run_dir):
    out, _, _, _ = run_dir
    overlay = np.asarray(Image.open(out / "a.png"))
    assert overlay.shape[1] == 2 * W + 4 and overlay.shape[0] > H  # instance | semantic, titles on top


def test_coco_results_load_with_pycocotools(run_dir):
    from pycocotools.coco import COCO

    out, _, truth, finished = run_dir
    assert {p.name for p in finished} >= {"coco_images.json", "coco_results.json", "measurements.csv"}
    gt = COCO(str(out / "coco_images.json"))
    dt = gt.loadRes(str(out / "coco_results.json"))
    assert sorted(gt.getImgIds()) == [1, 2]
    assert {c["name"] for c in gt.loadCats(gt.getCatIds())} >= {"donut", "cat", "dog"}
    for image_id, stem in ((1, "a"), (2, "b")):
        inst = truth[stem][1]
        anns = dt.loadAnns(dt.getAnnIds(imgIds=[image_id]))
        assert len(anns) == len(inst)
        for ann, k in zip(sorted(anns, key=lambda a: -a["score"]), range(len(inst))):
            assert (dt.annToMask(ann).astype(bool) == inst.masks[k]).all()
            assert ann["category_id"] == inst.class_ids[k]
            assert gt.loadCats(ann["category_id"])[0]["name"] == inst.labels[k]
            x, y, w, h = ann["bbox"]
            assert np.allclose([x, y, x + w, y + h], inst.boxes[k])
            # (loadRes sets "area" from the bbox whenever results carry one, as detectron2's do)


def test_label_maps_back_to_instances(run_dir):
    out, _, truth, _ = run_dir
    ids = np.asarray(Image.open(out / "masks" / "a.instances.png"))
    assert ids.dtype == np.uint16 and ids.max() == 4
    sem = Image.open(out / "masks" / "a.semantic.png")
    assert sem.mode == "P" and set(np.unique(np.asarray(sem))) == {0, 17, 18, 60}
    back = read_label_maps(out / "masks" / "a.instances.png", out / "masks" / "a.semantic.png", categories=COCO_TORCHVISION)
    inst = truth["a"][1]
    assert len(back) == len(inst)
    assert (back.masks == inst.masks).all()
    assert back.labels == inst.labels and (back.class_ids == inst.class_ids).all()


def test_label_maps_overlap_goes_to_the_higher_score(tmp_path):
    from masklab.io.formats import write_label_maps

    m = np.zeros((2, 20, 20), bool)
    m[0, 0:10, 0:10] = True
    m[1, 5:15, 5:15] = True
    inst = Instances.from_masks(m, class_ids=[1, 2], labels=["a", "b"], scores=[0.4, 0.9])
    ids_png, sem_png = write_label_maps(tmp_path, "x", inst)
    ids = np.asarray(Image.open(ids_png)).astype(int)
    assert ids[7, 7] == 2 and ids[2, 2] == 1
    back = read_label_maps(ids_png, sem_png)
    assert back.labels == ("class_1", "class_2") and back.masks[1].sum() == 100


def test_labelme_round_trip(run_dir):
    out, _, truth, _ = run_dir
    doc = json.loads((out / "labelme" / "a.json").read_text())
    assert doc["imageHeight"] == H and doc["imageData"] is None
    assert [s["shape_type"] for s in doc["shapes"] if s["label"] == "donut"] == ["mask"]  # the donut: hole kept exactly
    got = read_labelme(out / "labelme" / "a.json")
    path, inst = truth["a"]
    assert got.image_path.resolve() == path.resolve()
    assert got.class_names == ("donut", "cat", "dog")  # order of first appearance
    assert len(got.instances) == len(inst)
    for k in range(len(inst)):
        assert got.instances.labels[k] == inst.labels[k]
        assert got.instances.class_ids[k] == got.class_names.index(inst.labels[k]) + 1
        assert iou(got.instances.masks[k], inst.masks[k]) >= 0.95
    assert not got.instances.masks[0][50, 45]  # the hole survived
    fixed = read_labelme(out / "labelme" / "a.json", class_names=["cat", "dog", "donut"])
    assert list(fixed.instances.class_ids) == [3, 1, 1, 2]
    with pytest.raises(DatasetError, match="donut"):
        read_labelme(out / "labelme" / "a.json", class_names=["cat", "dog"])


def test_labelme_other_shapes_and_bad_files(tmp_path):
    doc = {
        "imageHeight": 30,
        "imageWidth": 40,
        "imagePath": "x.jpg",
        "shapes": [
            {"label": "box", "points": [[5, 5], [14, 9]], "shape_type": "rectangle", "group_id": None, "flags": {}},
            {"label": "box", "points": [[1, 1], [3, 3]], "shape_type": "line", "group_id": None, "flags": {}},
        ],
    }
    p = tmp_path / "x.json"
    p.write_text(json.dumps(doc))
    got = read_labelme(p)
    assert len(got.instances) == 1 and got.instances.masks[0].sum() == 10 * 5
    assert got.image_path == tmp_path / "x.jpg"
    p.write_text("{not json")
    with pytest.raises(DatasetError, match="LabelMe"):
        read_labelme(p)
    doc["shapes"] = [{"label": "tri", "points": [[1, 1], [2, 2]], "shape_type": "polygon"}]
    p.write_text(json.dumps(doc))
    with pytest.raises(DatasetError, match="at least 3 points"):
        read_labelme(p)


def test_yolo_round_trip(run_dir):
    out, _, truth, _ = run_dir
    classes = read_yolo_classes(out / "yolo" / "classes.txt")
    assert len(classes) == 80 and classes[0] == "person"
    lines = (out / "yolo" / "labels" / "a.txt").read_text().splitlines()
    assert len(lines) == 4  # one line per object, parts and holes joined
    values = np.array([float(v) for v in lines[0].split()[1:]])
    assert values.min() >= 0 and values.max() <= 1
    path, inst = truth["a"]
    got = read_yolo(out / "yolo" / "labels" / "a.txt", class_names=out / "yolo" / "classes.txt", image_path=path)
    assert got.image_path == path and got.class_names == classes
    assert got.instances.labels == inst.labels
    assert [got.class_names[c - 1] for c in got.instances.class_ids] == list(inst.labels)
    for k in range(len(inst)):
        assert iou(got.instances.masks[k], inst.masks[k]) >= 0.95
    assert not got.instances.masks[0][50, 45]  # the donut's hole, through the keyhole bridge


def test_yolo_reader_layouts_and_errors(tmp_path):
    (tmp_path / "labels").mkdir()
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((50, 80, 3), np.uint8)).save(tmp_path / "images" / "p.jpg")
    lab = tmp_path / "labels" / "p.txt"
    lab.write_text("1 0.5 0.5 0.25 0.2\n\n0 0.1 0.1 0.3 0.1 0.3 0.3\n")
    got = read_yolo(lab, class_names=["a", "b"])
    assert got.image_path == tmp_path / "images" / "p.jpg"
    assert got.instances.image_size == (50, 80)
    assert got.instances.labels == ("b", "a")
    assert got.instances.masks[0].sum() == 20 * 10  # the box line: 0.25 x 80 by 0.2 x 50
    lab.write_text("5 0.1 0.1 0.3 0.1 0.3 0.3\n")
    with pytest.raises(DatasetError, match="class index 5"):
        read_yolo(lab, class_names=["a", "b"])
    lab.write_text("0 0.1 0.1 0.3\n")
    with pytest.raises(DatasetError, match="x y pairs"):
        read_yolo(lab, class_names=["a", "b"])
    with pytest.raises(DatasetError, match="image"):
        read_yolo(tmp_path / "elsewhere.txt", class_names=["a"])


def test_measurements_csv_with_calibration(run_dir):
    out, _, truth, _ = run_dir
    with open(out / "measurements.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8
    inst = truth["a"][1]
    areas, perims = inst.areas(), inst.perimeters()
    rows_a = [r for r in rows if r["image"].endswith("a.png")]
    assert len(rows_a) == len(inst) == 4  # one row per object of image a, in order
    for k, row in enumerate(rows_a):
        assert row["label"] == inst.labels[k] and int(row["area_px"]) == areas[k]
        assert float(row["area_mm2"]) == pytest.approx(areas[k] / 4.0)  # 2 px per mm -> 4 px per mm²
        assert float(row["perimeter_mm"]) == pytest.approx(perims[k] / 2.0, abs=1e-3)
        assert float(row["bbox_x1"]) == inst.boxes[k][0]


def test_finish_rebuilds_from_json_and_threads(tmp_path):
    """Concurrent writes for distinct stems, then a second writer (a resumed run) finishes all of them."""
    writer = OutputWriter(tmp_path, model_name="t", viz="none", formats=["coco", "csv"], categories=COCO_TORCHVISION)
    errors = []

    def job(k):
        try:
            writer.write(stem=f"im{k}", image_name=f"im{k}.png", image=make_scene(H, W, seed=k), instances=scene_instances(k))
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=job, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and not list(tmp_path.glob("*.png"))
    resumed = OutputWriter(tmp_path, model_name="t", viz=[], formats="coco,csv", categories=COCO_TORCHVISION)
    resumed.finish([f"im{k}" for k in range(6)])
    results = json.loads((tmp_path / "coco_results.json").read_text())
    assert sorted({r["image_id"] for r in results}) == list(range(1, 7)) and len(results) == 24


def test_writer_option_errors(tmp_path):
    with pytest.raises(UsageError, match="shapefile"):
        OutputWriter(tmp_path, model_name="t", formats="json,shapefile")
    with pytest.raises(UsageError, match="sparkles"):
        OutputWriter(tmp_path, model_name="t", viz="instance,sparkles")
    with pytest.raises(UsageError, match="category list"):
        OutputWriter(tmp_path, model_name="t", formats="yolo")
    with pytest.raises(UsageError, match="px_per_unit"):
        OutputWriter(tmp_path, model_name="t", formats="csv", px_per_unit=0)
    with pytest.raises(UsageError, match="unit"):
        OutputWriter(tmp_path, model_name="t", formats="csv", px_per_unit=2, unit="mm; rm")
    w = OutputWriter(tmp_path, model_name="t", viz="none", formats="csv")
    assert w.formats == ("json", "csv") and w.viz == ()


def test_cli_save_flags_end_to_end(tmp_path, small_weights, capsys):
    """`masklab segment --save ... --viz instance,semantic --px-per-unit` writes every format."""
    from masklab.cli import main

    Image.fromarray(make_scene(H, W, seed=3)).save(tmp_path / "p.png")
    out = tmp_path / "out"
    args = ["segment", str(tmp_path / "p.png"), "--out", str(out), "--model", str(small_weights), "--device", "cpu"]
    args += ["--score-thresh", "0", "--max-detections", "5", "--min-size", "128", "--max-size", "192"]
    args += ["--save", "json,coco,png-masks,labelme,yolo,csv", "--viz", "instance,semantic", "--px-per-unit", "4", "--unit", "um"]
    assert main(args) == 0
    doc = json.loads((out / "p.json").read_text())
    n = len(doc["instances"])
    assert n > 0
    assert np.asarray(Image.open(out / "p.png")).shape[1] == 2 * W + 4
    assert np.asarray(Image.open(out / "masks" / "p.instances.png")).max() <= n
    assert len(read_labelme(out / "labelme" / "p.json").instances) >= 1
    classes = read_yolo_classes(out / "yolo" / "classes.txt")
    assert classes == ("class_1", "class_2", "class_3")
    got = read_yolo(out / "yolo" / "labels" / "p.txt", class_names=classes, image_size=(H, W))
    assert 1 <= len(got.instances) <= n  # objects too small for a polygon have no line
    assert set(got.instances.labels) <= set(classes)
    with open(out / "measurements.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n and float(rows[0]["area_um2"]) == pytest.approx(int(rows[0]["area_px"]) / 16)
    assert json.loads((out / "coco_results.json").read_text())[0]["image_id"] == 1
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["formats"] == ["json", "coco", "png-masks", "labelme", "yolo", "csv"]
    assert main(args[:-8] + ["--save", "json,shapefile"]) == 2
    assert "shapefile" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::masklab.io.formats.yolo.JoinedPartsWarning")  # the cat in two parts
def test_box_local_masks_write_the_same_bytes_as_dense_ones(tmp_path, monkeypatch):
    """The writer crops small objects' masks to their boxes before writing (less work per file); every
    per-image file must equal, byte for byte, what the dense masks give."""
    from masklab.io.formats import writer as writer_mod

    inst = scene_instances()
    assert writer_mod._box_local(inst).is_cropped
    full = Instances.from_masks(np.ones((2, H, W), bool), class_ids=[1, 2], labels=["a", "b"], scores=[0.9, 0.8])
    assert not writer_mod._box_local(full).is_cropped  # boxes cover the image: a copy would save nothing
    img = make_scene(H, W, seed=3)

    def write(out, instances):
        w = OutputWriter(out, model_name="test", viz="instance,semantic", formats="json,png-masks,labelme,yolo",
                         categories=COCO_TORCHVISION, px_per_unit=2.0, unit="mm")
        return {p.relative_to(out): p.read_bytes() for p in w.write(stem="a", image_name="a.png", image=img, instances=instances)}

    blank = Instances.from_masks(np.zeros((1, H, W), bool), class_ids=[18], labels=["dog"], scores=[0.5])
    with_empty = Instances.cat([inst, blank])  # an empty mask among others: a 0 x 0 crop
    assert writer_mod._box_local(with_empty).is_cropped
    for instances in (inst, with_empty, inst[[0]], inst[:0]):
        box_local = write(tmp_path / f"local{len(instances)}", instances)
        with monkeypatch.context() as m:
            m.setattr(writer_mod, "_box_local", lambda x: x)
            dense = write(tmp_path / f"dense{len(instances)}", instances)
        assert len(dense) >= 5 and box_local == dense
