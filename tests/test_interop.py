"""masklab.interop: supervision, Label Studio, CVAT and FiftyOne, each read back by the tool's own code
where it can be installed (supervision, label_studio_converter, pycocotools), by a schema from the tool's
documentation otherwise (Label Studio itself is too large for [dev])."""

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from masklab.errors import DatasetError
from masklab.interop import (
    cvat_coco,
    from_supervision,
    labelstudio_tasks,
    read_cvat_xml,
    read_labelstudio,
    read_run,
    to_cvat_xml,
    to_supervision,
    write_cvat_xml,
    write_fiftyone_dataset,
    write_labelstudio,
)
from masklab.interop.labelstudio import brush_rle_decode, brush_rle_encode
from masklab.io.formats import OutputWriter
from masklab.structures.instances import Instances

H, W = 60, 90


def scene():
    """A ring (hole), a two-part object, and a box touching the image corner; scores differ."""
    yy, xx = np.mgrid[:H, :W]
    d = np.hypot(yy - 30, xx - 30)
    m = np.zeros((3, H, W), bool)
    m[0] = (d < 20) & (d >= 8)
    m[1, 5:15, 60:75] = True
    m[1, 40:55, 70:85] = True
    m[2, 0:10, 0:12] = True
    return Instances.from_masks(m, class_ids=[3, 1, 2], labels=["ring", "cat", "box"], scores=[0.91, 0.62, 0.33])


def same(a: Instances, b: Instances, *, scores_atol=0.0):
    assert a.image_size == b.image_size and a.labels == b.labels
    np.testing.assert_array_equal(np.asarray(a.masks), np.asarray(b.masks))
    np.testing.assert_allclose(a.scores, b.scores, atol=scores_atol)


# -- supervision ---------------------------------------------------------------------------------------
def test_supervision_round_trip_is_equal():
    sv = pytest.importorskip("supervision")
    inst = scene()
    det = to_supervision(inst)
    assert isinstance(det, sv.Detections) and len(det) == 3
    assert det.data["class_name"].tolist() == ["ring", "cat", "box"]
    np.testing.assert_array_equal(det.xyxy, inst.boxes)
    np.testing.assert_array_equal(det.class_id, inst.class_ids)
    back = from_supervision(det)
    same(back, inst)
    np.testing.assert_array_equal(back.boxes, inst.boxes)
    np.testing.assert_array_equal(back.class_ids, inst.class_ids)
    # supervision's own operations work on it: filtering by confidence keeps the class names aligned
    kept = det[det.confidence > 0.5]
    assert kept.data["class_name"].tolist() == ["ring", "cat"]
    assert from_supervision(kept).labels == ("ring", "cat")
    # and its annotator draws the masks (pixels inside the ring change, outside stay)
    drawn = sv.MaskAnnotator(opacity=1.0).annotate(np.zeros((H, W, 3), np.uint8), det)
    assert drawn[30, 45].any() and not drawn[30, 30].any()


def test_from_supervision_without_masks():
    sv = pytest.importorskip("supervision")
    det = sv.Detections(xyxy=np.array([[2, 3, 12, 8]], np.float32), class_id=np.array([1]))
    with pytest.raises(ValueError, match="no masks"):
        from_supervision(det)
    inst = from_supervision(det, image_size=(20, 30), box_masks=True, class_names=["bg", "car"])
    assert inst.labels == ("car",) and inst.masks[0].sum() == 10 * 5 and inst.scores[0] == 1.0


def test_from_supervision_of_an_empty_detection():
    sv = pytest.importorskip("supervision")
    inst = from_supervision(sv.Detections.empty(), image_size=(20, 30), box_masks=True)
    assert len(inst) == 0 and inst.image_size == (20, 30)


# -- Label Studio ----------------------------------------------------------------------------------------
#: The import format of tasks with predictions, as Label Studio documents it:
#: https://labelstud.io/guide/task_format (tasks: "data" + optional "predictions"),
#: https://labelstud.io/guide/predictions (a prediction: "model_version", "score", "result"; a result:
#: "from_name", "to_name", "type", "value", optional "score", "original_width", "original_height"),
#: https://labelstud.io/tags/brushlabels ("value": {"format": "rle", "rle": [...], "brushlabels": [...]})
#: and https://labelstud.io/tags/polygonlabels ("value": {"points": [[x%, y%], ...], "polygonlabels": [...]}).
_PERCENT = {"type": "number", "minimum": 0, "maximum": 100}
LS_TASKS_SCHEMA = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["data"],
        "properties": {
            "data": {"type": "object", "required": ["image"], "properties": {"image": {"type": "string", "minLength": 1}}},
            "predictions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["result"],
                    "properties": {
                        "model_version": {"type": "string"},
                        "score": {"type": "number"},
                        "result": {"type": "array", "items": {"$ref": "#/$defs/result"}},
                    },
                },
            },
        },
    },
    "$defs": {
        "result": {
            "type": "object",
            "required": ["from_name", "to_name", "type", "value"],
            "properties": {
                "id": {"type": "string"},
                "from_name": {"type": "string"},
                "to_name": {"type": "string"},
                "score": {"type": "number", "minimum": 0, "maximum": 1},
                "original_width": {"type": "integer", "minimum": 1},
                "original_height": {"type": "integer", "minimum": 1},
                "type": {"enum": ["brushlabels", "polygonlabels"]},
                "value": {"oneOf": [
                    {"type": "object", "required": ["format", "rle", "brushlabels"],
                     "properties": {"format": {"const": "rle"},
                                    "rle": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 255}},
                                    "brushlabels": {"type": "array", "items": {"type": "string"}, "minItems": 1}}},
                    {"type": "object", "required": ["points", "polygonlabels"],
                     "properties": {"points": {"type": "array", "minItems": 3,
                                               "items": {"type": "array", "items": _PERCENT, "minItems": 2, "maxItems": 2}},
                                    "polygonlabels": {"type": "array", "items": {"type": "string"}, "minItems": 1}}},
                ]},
            },
        }
    },
}


def _as_export(tasks):
    """What Label Studio's JSON export holds after a reviewer accepted the predictions as annotations."""
    return [{"id": i + 1, "data": t["data"], "annotations": [{"id": i + 1, "was_cancelled": False, "result": t["predictions"][0]["result"]}]}
            for i, t in enumerate(tasks)]


@pytest.mark.parametrize("kind", ["brush", "polygon"])
def test_labelstudio_tasks_validate_and_round_trip(tmp_path, kind):
    jsonschema = pytest.importorskip("jsonschema")
    inst = scene()
    paths = write_labelstudio(tmp_path, [("a.png", inst)], kind=kind, image_url_prefix="/data/local-files/?d=photos/")
    tasks = json.loads(paths[0].read_text())
    jsonschema.validate(tasks, LS_TASKS_SCHEMA)
    assert tasks[0]["data"]["image"] == "/data/local-files/?d=photos/a.png"
    config = ET.fromstring(paths[1].read_text())  # the labeling config is XML Label Studio parses
    tag = config.find("BrushLabels" if kind == "brush" else "PolygonLabels")
    assert tag.get("name") == "label" and [lab.get("value") for lab in tag] == ["ring", "cat", "box"]
    (tmp_path / "export.json").write_text(json.dumps(_as_export(tasks)))
    got = read_labelstudio(tmp_path / "export.json", images_dir=tmp_path)
    assert len(got) == 1 and got[0].image_path == tmp_path / "a.png"
    back = got[0].instances
    if kind == "brush":
        same(back, inst, scores_atol=1e-6)  # exact: brush RLE keeps holes and parts
    else:
        # polygons: Label Studio has no holes and no multi-part polygons, so the ring comes back filled
        # and the two-part object as two objects; the box is exact
        assert back.labels == ("ring", "cat", "cat", "box")
        np.testing.assert_array_equal(back.masks[3], inst.masks[2])
        assert back.masks[0][30, 30] and (back.masks[1] | back.masks[2]).sum() == inst.masks[1].sum()


def test_labelstudio_brush_rle_decodes_with_label_studios_own_decoder():
    brush = pytest.importorskip("label_studio_converter.brush")
    rng = np.random.default_rng(0)
    for mask in (scene().masks[0], rng.random((37, 53)) > 0.5, np.zeros((5, 7), bool), np.ones((120, 130), bool)):
        rle = brush_rle_encode(mask)
        theirs = brush.decode_rle(rle).reshape(*mask.shape, 4)[:, :, 3]
        np.testing.assert_array_equal(theirs > 0, mask)
        np.testing.assert_array_equal(brush_rle_decode(rle, mask.shape), mask)
        # and masklab's decoder reads what Label Studio's encoder writes (its mask2rle, alpha 255)
        ours = brush_rle_decode(brush.mask2rle(mask.astype(np.uint8) * 255), mask.shape)
        np.testing.assert_array_equal(ours, mask)


def test_labelstudio_reader_errors(tmp_path):
    p = tmp_path / "x.json"
    p.write_text('{"not": "a list"}')
    with pytest.raises(DatasetError, match="list of tasks"):
        read_labelstudio(p)
    bad = [{"data": {"image": "a.png"}, "annotations": [{"result": [
        {"type": "polygonlabels", "original_width": 10, "original_height": 10, "value": {"polygonlabels": ["x"]}}]}]}]
    p.write_text(json.dumps(bad))
    with pytest.raises(DatasetError, match="polygonlabels"):
        read_labelstudio(p)
    assert labelstudio_tasks([("e.png", Instances.empty((4, 4)))])[0]["predictions"][0]["result"] == []


# -- CVAT ------------------------------------------------------------------------------------------------
def test_cvat_xml_round_trip(tmp_path):
    inst = scene()
    path = write_cvat_xml(tmp_path / "annotations.xml", [("a.png", inst), ("empty.png", Instances.empty((H, W)))])
    root = ET.parse(path).getroot()
    assert root.findtext("version") == "1.1"
    assert [e.text for e in root.iterfind("./meta/task/labels/label/name")] == ["ring", "cat", "box"]
    img = root.find("image")
    assert (img.get("name"), img.get("width"), img.get("height")) == ("a.png", str(W), str(H))
    assert [e.tag for e in img] == ["mask", "polygon", "polygon", "polygon"]  # ring as a mask, cat in two parts
    m = img.find("mask")
    ys, xs = np.nonzero(inst.masks[0])
    assert (m.get("left"), m.get("top"), m.get("width")) == (str(xs.min()), str(ys.min()), str(xs.max() - xs.min() + 1))
    assert sum(int(v) for v in m.get("rle").split(",")) == int(m.get("width")) * int(m.get("height"))
    got = read_cvat_xml(path)
    assert [g.image_path.name for g in got] == ["a.png", "empty.png"] and len(got[1].instances) == 0
    same(got[0].instances, inst, scores_atol=5e-5)  # scores written with 4 decimals
    assert got[0].class_names == ("ring", "cat", "box")


def test_cvat_reader_errors(tmp_path):
    p = tmp_path / "a.xml"
    p.write_text("<annotations><image name='a' width='4' height='x'/></annotations>")
    with pytest.raises(DatasetError, match="integer width and height"):
        read_cvat_xml(p)
    p.write_text("<annotations><image name='a' width='4' height='4'><mask label='m' rle='1, 2' left='0' top='0' width='2' height='2'/></image></annotations>")
    with pytest.raises(DatasetError, match="cover 3 pixels"):
        read_cvat_xml(p)
    p.write_text("<nope")
    with pytest.raises(DatasetError, match="not valid XML"):
        read_cvat_xml(p)


def test_cvat_coco_loads_in_pycocotools_and_masklab(tmp_path):
    from pycocotools.coco import COCO

    from masklab.data.dataset import open_dataset

    inst = scene()
    doc = cvat_coco([("a.png", inst)])
    assert [a["iscrowd"] for a in doc["annotations"]] == [1, 0, 0]  # the ring (a hole) as an RLE mask
    assert [a["attributes"]["score"] for a in doc["annotations"]] == [0.91, 0.62, 0.33]
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_default.json").write_text(json.dumps(doc))
    coco = COCO(str(tmp_path / "annotations" / "instances_default.json"))
    masks = [coco.annToMask(a).astype(bool) for a in coco.loadAnns(coco.getAnnIds(imgIds=[1]))]
    np.testing.assert_array_equal(masks[0], inst.masks[0])
    for got, want in zip(masks[1:], inst.masks[1:]):
        # COCO rasterises polygons with vertices at pixel indices half a pixel inside the boundary
        assert (got & want).sum() / (got | want).sum() >= 0.7
    from PIL import Image

    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "annotations" / "a.png")
    ds = open_dataset(tmp_path / "annotations" / "instances_default.json")  # CVAT's COCO export reads back
    assert len(ds) == 1 and sorted(ds[0].target.labels) == ["box", "cat", "ring"]


# -- FiftyOne ---------------------------------------------------------------------------------------------
def test_fiftyone_export(tmp_path):
    from pycocotools.coco import COCO

    inst = scene()
    path = write_fiftyone_dataset(tmp_path, [("a.png", inst)])
    coco = COCO(str(path))  # the COCO detection dataset FiftyOne imports: checked with pycocotools here
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    assert [a["score"] for a in anns] == [0.91, 0.62, 0.33]
    for a, want in zip(anns, inst.masks):
        np.testing.assert_array_equal(coco.annToMask(a).astype(bool), want)
    fo = pytest.importorskip("fiftyone", reason="fiftyone is not in [dev] (it pins starlette below the [serve] "
                             "security floor and downgrades opencv); the file was checked with pycocotools")
    from PIL import Image

    from masklab.interop import to_fiftyone

    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "a.png")
    ds = to_fiftyone(path, data_path=tmp_path)
    dets = ds.first()["predictions_segmentations"].detections
    assert isinstance(ds, fo.Dataset) and [d.label for d in dets] == ["ring", "cat", "box"]


# -- a run folder ------------------------------------------------------------------------------------------
def test_read_run_gives_what_the_writer_wrote(tmp_path):
    inst = scene()
    writer = OutputWriter(tmp_path, model_name="t", viz="none", formats="json")
    writer.write(stem="a", image_name="photos/a.png", image=np.zeros((H, W, 3), np.uint8), instances=inst)
    (tmp_path / "run.json").write_text(json.dumps({"settings": {}}))
    items = read_run(tmp_path)
    assert [n for n, _ in items] == ["photos/a.png"]
    same(items[0][1], inst, scores_atol=1e-6)
    assert to_cvat_xml(items).count("<polygon") == 3
    with pytest.raises(DatasetError, match="no per-image JSON"):
        read_run(tmp_path / "nothing")


# -- the CLI: a run folder (predictions) or a dataset, for each tool -----------------------------------------
@pytest.mark.parametrize("to", ["cvat", "cvat-coco", "labelstudio", "fiftyone"])
def test_convert_cli_exports_a_run_for_each_tool(tmp_path, to):
    from masklab.cli import main

    run = tmp_path / "run"
    writer = OutputWriter(run, model_name="t", viz="none", formats="json")
    writer.write(stem="a", image_name="photos/a.png", image=np.zeros((H, W, 3), np.uint8), instances=scene())
    (run / "run.json").write_text(json.dumps({"settings": {}}))
    assert main(["convert", str(run), str(tmp_path / to), "--to", to, "--labelstudio-kind", "polygon"]) == 0
    if to == "cvat":
        got = read_cvat_xml(tmp_path / to / "annotations.xml")[0]
        assert got.image_path.name == "a.png" and got.instances.labels == ("ring", "cat", "box")
        assert got.instances.scores.tolist() == pytest.approx([0.91, 0.62, 0.33], abs=1e-4)
    elif to == "labelstudio":
        tasks = json.loads((tmp_path / to / "labelstudio_tasks.json").read_text())
        assert {r["type"] for r in tasks[0]["predictions"][0]["result"]} == {"polygonlabels"}
        assert (tmp_path / to / "labelstudio_config.xml").is_file()
    else:
        name = "annotations/instances_default.json" if to == "cvat-coco" else "labels.json"
        doc = json.loads((tmp_path / to / name).read_text())
        assert [a["score"] for a in doc["annotations"]] == [0.91, 0.62, 0.33]


@pytest.mark.parametrize("tool", ["labelstudio", "cvat"])
def test_tool_exports_read_as_a_training_dataset(tmp_path, tool):
    """A reviewed Label Studio export / CVAT XML is a dataset: detected, opened, masks as written."""
    from PIL import Image

    from masklab.data.dataset import open_dataset
    from masklab.data.readers import detect_format

    inst = scene()
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "a.png")
    if tool == "labelstudio":
        tasks = labelstudio_tasks([("a.png", inst)], image_url_prefix="/data/upload/1/")
        (tmp_path / "export.json").write_text(json.dumps(_as_export(tasks)))
    else:
        write_cvat_xml(tmp_path / "annotations.xml", [("a.png", inst)])
    assert detect_format(tmp_path) == tool
    ds = open_dataset(tmp_path)
    assert len(ds) == 1 and ds.class_names == ("ring", "cat", "box")
    target = ds[0].target
    assert target.labels == inst.labels
    np.testing.assert_array_equal(np.asarray(target.masks), np.asarray(inst.masks))


def test_instances_html_table_for_notebooks():
    html = scene()._repr_html_()
    root = ET.fromstring(html)  # well-formed markup
    rows = root.findall(".//tbody/tr")
    assert [r[1].text for r in rows] == ["ring", "cat", "box"] and rows[0][2].text == "0.910"
    assert "3 objects" in "".join(root.itertext())
    many = Instances.cat([scene()] * 10)._repr_html_(max_rows=5)
    assert many.count("<tr>") == 1 + 5 + 1 and "25 more" in many  # header, 5 rows, the "more" line
    odd = Instances.from_masks(np.ones((1, 4, 4), bool), class_ids=[1], labels=["<b>&"])._repr_html_()
    assert "&lt;b&gt;&amp;" in odd
    assert "0 objects" in Instances.empty((4, 4))._repr_html_()
