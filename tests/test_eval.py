"""COCO evaluation: every number against pycocotools run directly on the same files, known answers,
edge cases (no predictions, images without ground truth, crowd regions), pictures, and the CLI."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from masklab.cli import main
from masklab.data.coco import CocoGroundTruth
from masklab.errors import DatasetError, UsageError
from masklab.evaluation import STAT_NAMES, evaluate_instances, evaluate_results, write_report
from masklab.structures.instances import Instances
from masklab.structures.masks import encode_rle

H, W = 60, 80
CAT, DOG = 3, 7  # non-contiguous dataset ids on purpose


def _square(y: int, x: int, size: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y : y + size, x : x + size] = True
    return m


def _rle(mask: np.ndarray) -> dict:
    return encode_rle(mask[None])[0]


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE (column-major run lengths, starting with zeros), as crowd annotations use."""
    flat = mask.T.reshape(-1).astype(np.uint8)
    counts, cur, run = [], 0, 0
    for v in flat:
        if v == cur:
            run += 1
        else:
            counts.append(run)
            cur, run = v, 1
    counts.append(run)
    return {"size": [H, W], "counts": counts}


# Ground truth: image 1 has a cat (polygon) and a dog (compressed RLE); image 2 a cat (uncompressed RLE)
# and a crowd of dogs (uncompressed RLE, iscrowd=1); image 3 has no objects.
CAT1 = _square(10, 10, 20)
DOG1 = _square(30, 45, 24)
CAT2 = _square(5, 40, 16)
CROWD2 = np.zeros((H, W), bool)
CROWD2[35:58, 2:40] = True


def _complete(ann: dict) -> dict:
    """Add ``area`` and ``bbox`` as a COCO file has them (pycocotools reads them, it does not compute them)."""
    from pycocotools import mask as mask_utils

    seg = ann["segmentation"]
    rle = mask_utils.merge(mask_utils.frPyObjects(seg, H, W)) if isinstance(seg, list) else (
        mask_utils.frPyObjects(seg, H, W) if isinstance(seg["counts"], list) else seg)
    return {**ann, "area": float(mask_utils.area(rle)), "bbox": [float(v) for v in mask_utils.toBbox(rle)]}


def _gt_dict() -> dict:
    return {
        "images": [
            {"id": 1, "file_name": "one.png", "width": W, "height": H},
            {"id": 2, "file_name": "two.png", "width": W, "height": H},
            {"id": 3, "file_name": "three.png", "width": W, "height": H},
        ],
        "categories": [{"id": CAT, "name": "cat"}, {"id": DOG, "name": "dog"}],
        "annotations": [_complete(a) for a in [
            {"id": 11, "image_id": 1, "category_id": CAT, "iscrowd": 0,
             "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]]},
            {"id": 12, "image_id": 1, "category_id": DOG, "iscrowd": 0, "segmentation": _rle(DOG1)},
            {"id": 21, "image_id": 2, "category_id": CAT, "iscrowd": 0, "segmentation": _uncompressed_rle(CAT2)},
            {"id": 22, "image_id": 2, "category_id": DOG, "iscrowd": 1, "segmentation": _uncompressed_rle(CROWD2)},
        ]],
    }


def _pred(image_id: int, cat: int, mask: np.ndarray, score: float) -> dict:
    ys, xs = np.nonzero(mask)
    return {"image_id": image_id, "category_id": cat, "score": score, "segmentation": _rle(mask),
            "bbox": [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min())]}


def _perfect() -> list[dict]:
    """Predictions equal to the (non-crowd) ground truth."""
    gt = CocoGroundTruth.from_dict(_gt_dict())
    out = []
    for image_id in gt.image_ids:
        inst = gt.instances(image_id)
        inst = inst[~inst.extra["iscrowd"]]
        out += inst.to_coco(image_id, category_ids={"cat": CAT, "dog": DOG})
    return out


@pytest.fixture
def gt_file(tmp_path) -> Path:
    path = tmp_path / "val.json"
    path.write_text(json.dumps(_gt_dict()))
    return path


def _pycocotools(gt_path: Path, results: list[dict], iou_type: str, cat_ids: list[int] | None = None) -> np.ndarray:
    """pycocotools run directly: COCO(file), loadRes, COCOeval. Mask results carry no box and box results
    no mask, as COCO's result formats (the definition masklab documents)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    res = copy.deepcopy(results)
    for r in res:
        r.pop("bbox" if iou_type == "segm" else "segmentation", None)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(gt_path))
        ev = COCOeval(coco, coco.loadRes(res), iou_type)
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def _none_to_minus1(v):
    return -1.0 if v is None else v


def _assert_matches_pycocotools(gt_path: Path, results: list[dict], report: dict) -> None:
    """Every COCO number and every per-class AP equals pycocotools' own, to 1e-6."""
    for iou_type in ("bbox", "segm"):
        ref = _pycocotools(gt_path, results, iou_type)
        ours = [_none_to_minus1(report[iou_type][k]) for k in STAT_NAMES]
        np.testing.assert_allclose(ours, ref, atol=1e-6, err_msg=iou_type)
        for name, pc in report["per_class"].items():
            ref_c = _pycocotools(gt_path, results, iou_type, cat_ids=[pc["category_id"]])
            got = [_none_to_minus1(pc[iou_type][k]) for k in ("AP", "AP50", "AP75")]
            np.testing.assert_allclose(got, ref_c[:3], atol=1e-6, err_msg=f"{iou_type} {name}")


def _eval(gt_file: Path, results: list[dict], **kw) -> dict:
    return evaluate_results(CocoGroundTruth.load(gt_file), results, **kw).to_dict()


# -- known answers, checked against pycocotools -------------------------------------------------------
def test_perfect_predictions_give_ap_1(gt_file):
    results = _perfect()
    gt = CocoGroundTruth.load(gt_file)
    before = copy.deepcopy(gt.dataset)
    rep = evaluate_results(gt, results).to_dict()
    assert gt.dataset == before  # pycocotools rewrites what it is given: it gets a copy
    _assert_matches_pycocotools(gt_file, results, rep)
    for t in ("bbox", "segm"):
        assert rep[t]["AP"] == pytest.approx(1.0, abs=1e-9)
        assert rep[t]["AR100"] == pytest.approx(1.0, abs=1e-9)
        assert rep[t]["APl"] is None  # no large objects: pycocotools' -1 is null here
    assert rep["counts"]["overall"] == {"mae": 0.0, "mean_error": 0.0, "exact": 1.0, "gt_total": 3, "pred_total": 3,
                                        "exact_all_classes": 1.0}
    assert rep["confusion"]["matrix"] == [[2, 0, 0], [0, 1, 0], [0, 0, 0]]
    assert rep["per_class"]["dog"]["gt_instances"] == 1  # the crowd region is not an object


def test_missing_instance_lowers_exactly_its_class(gt_file):
    results = [r for r in _perfect() if r["category_id"] != DOG]
    rep = _eval(gt_file, results)
    _assert_matches_pycocotools(gt_file, results, rep)
    assert rep["per_class"]["cat"]["segm"]["AP"] == pytest.approx(1.0)
    assert rep["per_class"]["dog"]["segm"]["AP"] == 0.0
    assert rep["segm"]["AP"] == pytest.approx(0.5)  # mean over the two classes with ground truth
    assert rep["confusion"]["matrix"] == [[2, 0, 0], [0, 0, 1], [0, 0, 0]]  # the dog is missed
    dog = rep["counts"]["per_class"]["dog"]
    assert dog["mae"] == pytest.approx(1 / 3) and dog["exact"] == pytest.approx(2 / 3) and dog["mean_error"] == pytest.approx(-1 / 3)


def test_shifted_instance_fails_only_the_strict_thresholds(gt_file):
    from pycocotools import mask as mask_utils

    results = _perfect()
    shifted = np.roll(CAT1, 4, axis=1)  # 4 px right: IoU = 16*20 / (24*20) = 2/3
    i = next(k for k, r in enumerate(results) if r["image_id"] == 1 and r["category_id"] == CAT)
    results[i] = _pred(1, CAT, shifted, 0.6)  # below the other cat's score 1.0
    gt_rle = CocoGroundTruth.load(gt_file).dataset["annotations"][0]["segmentation"]
    iou = mask_utils.iou([results[i]["segmentation"]], mask_utils.frPyObjects(gt_rle, H, W), [0])[0][0]
    assert 0.65 < iou < 0.70
    rep = _eval(gt_file, results)
    _assert_matches_pycocotools(gt_file, results, rep)
    # IoU thresholds 0.50..0.65 (4 of 10): both cats found, AP 1. 0.70..0.95 (6): only the top-scored cat
    # is right, precision 1 up to recall 0.5 then nothing: 51 of COCO's 101 recall points.
    expected_cat = (4 * 1.0 + 6 * 51 / 101) / 10
    assert rep["per_class"]["cat"]["segm"]["AP"] == pytest.approx(expected_cat, abs=1e-9)
    assert rep["per_class"]["cat"]["segm"]["AP50"] == pytest.approx(1.0)
    assert rep["per_class"]["cat"]["segm"]["AP75"] == pytest.approx(51 / 101)
    assert rep["per_class"]["dog"]["segm"]["AP"] == pytest.approx(1.0)
    assert rep["counts"]["overall"]["mae"] == 0.0  # still the right number of objects


def test_false_positive_on_image_without_ground_truth(gt_file):
    results = _perfect() + [_pred(3, CAT, _square(20, 20, 15), 0.99)]  # image 3 has no objects
    rep = _eval(gt_file, results)
    _assert_matches_pycocotools(gt_file, results, rep)
    # cat, by score: 1.0 TP, 1.0 TP, 0.99 FP -> precision 1 up to recall 1: AP stays 1. Put the FP first:
    results[-1]["score"] = 1.0
    results = [results[-1]] + results[:-1]
    rep2 = _eval(gt_file, results)
    _assert_matches_pycocotools(gt_file, results, rep2)
    assert rep["confusion"]["matrix"][2] == [1, 0, 0]  # background row: one false-positive cat
    counts = rep["counts"]
    assert counts["per_class"]["cat"]["pred_total"] == 3 and counts["per_class"]["cat"]["gt_total"] == 2
    assert counts["overall"]["exact"] == pytest.approx(2 / 3)


def test_prediction_on_a_crowd_region_is_ignored(gt_file):
    results = _perfect() + [_pred(2, DOG, CROWD2, 0.9)]
    rep = _eval(gt_file, results)
    _assert_matches_pycocotools(gt_file, results, rep)
    assert rep["per_class"]["dog"]["segm"]["AP"] == pytest.approx(1.0)  # not a false positive
    assert rep["confusion"]["matrix"][2] == [0, 0, 0]
    assert rep["counts"]["per_class"]["dog"]["pred_total"] == 1  # only the real dog counts
    # The same prediction where there is no crowd is a false positive.
    moved = _eval(gt_file, _perfect() + [_pred(3, DOG, CROWD2, 0.9)])
    assert moved["confusion"]["matrix"][2] == [0, 1, 0]


def test_zero_predictions_give_ap_0_without_crashing(gt_file, tmp_path):
    gt = CocoGroundTruth.load(gt_file)
    result = evaluate_results(gt, [])
    for stats in (result.bbox.stats, result.segm.stats):
        assert stats["AP"] == 0.0 and stats["AR100"] == 0.0 and stats["APl"] is None
    assert result.per_class()["cat"]["segm"]["AP"] == 0.0
    assert result.counts["overall"]["mae"] == pytest.approx(1.0)  # 2, 0, 0 objects per image -> |err| 2,1,0
    assert result.confusion.matrix.tolist() == [[0, 0, 2], [0, 0, 1], [0, 0, 0]]
    files = write_report(result, tmp_path / "r")
    assert json.loads(files["eval_json"].read_text())["segm"]["AP"] == 0.0
    # evaluate_instances with empty Instances everywhere is the same case.
    empty = {i: Instances.empty((H, W)) for i in gt.image_ids}
    assert evaluate_instances(gt, empty, model_classes=["cat", "dog"]).segm.stats["AP"] == 0.0


def test_box_only_results_have_no_mask_metrics(gt_file):
    results = [{k: v for k, v in r.items() if k != "segmentation"} for r in _perfect()]
    rep = _eval(gt_file, results)
    assert rep["segm"] is None and rep["bbox"]["AP"] == pytest.approx(1.0)
    np.testing.assert_allclose([_none_to_minus1(rep["bbox"][k]) for k in STAT_NAMES],
                               _pycocotools(gt_file, results, "bbox"), atol=1e-6)


# -- bad input -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r.__setitem__("image_id", 99), "images not in the ground truth"),
        (lambda r: r.__setitem__("category_id", 5), "category ids not in the ground truth"),
        (lambda r: r.pop("score"), "missing ['score']"),
        (lambda r: r.__setitem__("segmentation", {"size": [10, 10], "counts": "PP0"}), "does not match"),
        (lambda r: r.__setitem__("score", float("nan")), "finite"),
        (lambda r: r.__setitem__("score", "high"), "score must be a finite number, found 'high'"),
        (lambda r: r.__setitem__("bbox", [1, 2, "x", 4]), "bbox must be a finite number"),
        (lambda r: r.__setitem__("image_id", "1"), "image_id must be an integer"),
    ],
)
def test_bad_predictions_are_refused_clearly(gt_file, change, message):
    results = _perfect()
    change(results[0])
    with pytest.raises(DatasetError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _eval(gt_file, results)


def test_instances_are_matched_by_name_with_non_contiguous_ids(gt_file):
    gt = CocoGroundTruth.load(gt_file)
    preds = {}
    for image_id in gt.image_ids:
        inst = gt.instances(image_id)
        inst = inst[~inst.extra["iscrowd"]]
        # A model's own ids (1, 2) and its own spelling of the names: matched by name, not id.
        labels = ["Cat" if lab == "cat" else "dog" for lab in inst.labels]
        preds[image_id] = Instances(boxes=inst.boxes, masks=inst.masks, scores=inst.scores,
                                    class_ids=[1 if lab == "Cat" else 2 for lab in labels], labels=labels,
                                    image_size=inst.image_size)
    res = evaluate_instances(gt, preds, model_classes=["Cat", "dog", "person"])
    assert res.segm.stats["AP"] == pytest.approx(1.0)
    assert any("person" in n for n in res.notes)
    with pytest.raises(UsageError, match="(?s)model classes: a, b.*dataset categories: cat, dog"):
        evaluate_instances(gt, {}, model_classes=["a", "b"])
    with pytest.raises(DatasetError, match="images not in the ground truth"):
        evaluate_instances(gt, {42: Instances.empty((H, W))}, model_classes=["cat"])


# -- pictures ----------------------------------------------------------------------------------------------
def _pixel(fig, png: Path, ax, xy) -> np.ndarray:
    """RGB of the saved PNG at data point ``xy`` of ``ax`` (display y runs up, image rows down)."""
    x, y = ax.transData.transform(xy)
    arr = np.asarray(Image.open(png).convert("RGB"))
    return arr[int(round(arr.shape[0] - y)), int(round(x))].astype(int)


def test_confusion_png_shows_the_matrix(tmp_path):
    from matplotlib import colormaps

    from masklab.evaluation.plots import confusion_figure, save_figure

    matrix = np.array([[3, 1, 0], [0, 0, 2], [4, 0, 0]])  # row shares: 0.75/0.25, 0/0/1, 1/0/0
    fig = confusion_figure(matrix, ["cat", "dog", "background"], title="t")
    png = tmp_path / "c.png"
    save_figure(fig, png)
    ax = fig.axes[0]
    share = matrix / matrix.sum(axis=1, keepdims=True)
    for i in range(3):
        for j in range(3):
            # Sample off the cell centre, away from the count text.
            got = _pixel(fig, png, ax, (j - 0.35, i - 0.35))
            want = np.array(colormaps["Blues"](share[i, j])[:3]) * 255
            assert np.abs(got - want).max() <= 3, (i, j, got, want)


def test_report_pictures_follow_the_results(gt_file, tmp_path):
    from masklab.evaluation.plots import PR_STYLES, save_figure
    from masklab.evaluation.report import pr_picture

    # cat: the top-scored prediction is exact, the second is shifted to IoU 0.6. At IoU 0.50 precision
    # is 1 up to recall 1; at IoU 0.75 it is 1 up to recall 0.5, then 0.
    results = [r for r in _perfect() if not (r["image_id"] == 2 and r["category_id"] == CAT)]
    results.append(_pred(2, CAT, np.roll(CAT2, 4, axis=1), 0.5))  # IoU 12*16 / (20*16) = 0.6
    result = evaluate_results(CocoGroundTruth.load(gt_file), results)
    assert result.per_class()["cat"]["segm"]["AP50"] == pytest.approx(1.0)
    assert result.per_class()["cat"]["segm"]["AP75"] == pytest.approx(51 / 101)
    files = write_report(result, tmp_path / "out")
    png = tmp_path / "out" / "pr" / "3_cat.png"
    assert png.is_file() and (tmp_path / "out" / "pr" / "overall.png").is_file()
    fig = pr_picture(result, CAT)
    save_figure(fig, tmp_path / "again.png")
    # The report's picture is this figure, so ax.transData maps its data to the report PNG's pixels.
    assert np.array_equal(np.asarray(Image.open(tmp_path / "again.png")), np.asarray(Image.open(png)))
    arr = np.asarray(Image.open(png).convert("RGB")).astype(int)
    mask_ax = fig.axes[0]
    assert mask_ax.get_title() == "masks"

    def distance(xy, iou):
        """Smallest colour distance to the IoU curve's colour within 3 px of data point ``xy``."""
        colour = np.array([int(PR_STYLES[iou][0][k : k + 2], 16) for k in (1, 3, 5)])
        x, y = mask_ax.transData.transform(xy)
        r, c = int(round(arr.shape[0] - y)), int(round(x))
        patch = arr[r - 3 : r + 4, c - 3 : c + 4].reshape(-1, 3)
        return np.abs(patch - colour).max(axis=1).min()

    assert distance((0.25, 1.0), 0.75) <= 10  # both curves there; IoU 0.75 drawn on top
    assert distance((0.25, 1.0), 0.5) <= 10  # the wider IoU 0.50 line shows around it
    assert distance((0.75, 1.0), 0.5) <= 10  # only IoU 0.50 reaches recall 0.75
    assert distance((0.75, 1.0), 0.75) > 60
    assert distance((0.75, 0.5), 0.5) > 60  # nothing drawn in the empty middle
    md = (tmp_path / "out" / "report.md").read_text()
    assert "![confusion matrix](confusion.png)" in md and "pr/3_cat.png" in md
    counts_csv = (tmp_path / "out" / "counts.csv").read_text().splitlines()
    assert counts_csv[0] == "image_id,gt_total,pred_total,gt_cat,pred_cat,gt_dog,pred_dog"
    assert counts_csv[1:] == ["1,2,2,1,1,1,1", "2,1,1,1,1,0,0", "3,0,0,0,0,0,0"]
    assert json.loads(files["confusion_json"].read_text())["matrix"] == [[2, 0, 0], [0, 1, 0], [0, 0, 0]]


# -- CLI -------------------------------------------------------------------------------------------------------
def test_cli_predictions(gt_file, tmp_path, capsys):
    results = [r for r in _perfect() if r["category_id"] != DOG]
    (tmp_path / "results.json").write_text(json.dumps(results))
    out = tmp_path / "ev"
    code = main(["eval", "--data", str(gt_file), "--predictions", str(tmp_path / "results.json"), "--out", str(out)])
    assert code == 0
    rep = json.loads((out / "eval.json").read_text())
    _assert_matches_pycocotools(gt_file, results, rep)
    assert set(rep) >= {"bbox", "segm", "per_class", "counts"}
    stdout = capsys.readouterr().out
    assert "mask" in stdout and "0.500" in stdout
    # Without --out: a new folder under runs/ each time, never overwriting an earlier one.
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for _ in range(2):
            assert main(["eval", "--data", str(gt_file), "--predictions", "results.json", "--no-plots"]) == 0
    finally:
        os.chdir(cwd)
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 2 and all((r / "eval.json").is_file() for r in runs)
    bad = [dict(results[0], image_id=1234)]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    assert main(["eval", "--data", str(gt_file), "--predictions", str(tmp_path / "bad.json"), "--out", str(out)]) == 2
    assert "1234" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_model_run_and_rescore(tmp_path, small_weights, capsys):
    from conftest import make_scene

    (tmp_path / "val").mkdir()
    images, anns = [], []
    for i in (1, 2):
        Image.fromarray(make_scene(96, 128, seed=i)).save(tmp_path / "val" / f"im{i}.png")
        images.append({"id": i, "file_name": f"im{i}.png", "width": 128, "height": 96})
        anns.append({"id": i, "image_id": i, "category_id": 10 + i, "segmentation": [[10, 10, 50, 10, 50, 40, 10, 40]]})
    images.append({"id": 3, "file_name": "missing.png", "width": 128, "height": 96})  # no such file
    data = {"images": images, "annotations": anns, "categories": [{"id": 11, "name": "a"}, {"id": 12, "name": "c"}, {"id": 13, "name": "zebra"}]}
    (tmp_path / "val.json").write_text(json.dumps(data))
    out = tmp_path / "ev"
    args = ["eval", "--data", str(tmp_path / "val.json"), "--model", str(small_weights), "--device", "cpu",
            "--score-thresh", "0.0", "--min-size", "96", "--max-size", "128",  # the images' own size: cheap
            # this random model's 100 best detections are all class_2, its 200 best add class_3; its scores
            # sit near 0.25, so every prediction counts only from a count threshold of 0
            "--max-detections", "200", "--count-thresh", "0",
            "--out", str(out), "--no-progress"]
    # small_weights' classes are named class_1..3 when loaded by path: nothing matches "a", "c", "zebra".
    assert main(args) == 2
    assert "class_1" in capsys.readouterr().err
    data["categories"] = [{"id": 11, "name": "class_1"}, {"id": 12, "name": "class_3"}, {"id": 13, "name": "zebra"}]
    (tmp_path / "val.json").write_text(json.dumps(data))
    assert main(args) == 1  # one image could not be read; the others were scored
    assert "missing.png" in capsys.readouterr().err
    rep = json.loads((out / "eval.json").read_text())
    assert [f["image_id"] for f in rep["failures"]] == [3]
    preds = json.loads((out / "predictions.json").read_text())
    assert rep["predictions"] == len(preds) > 0 and {p["image_id"] for p in preds} == {1, 2}
    cats = {p["category_id"] for p in preds}
    assert 12 in cats and cats <= {11, 12}  # class_3 kept; class_2 has no dataset category: dropped
    assert any("zebra" in n for n in rep["notes"])
    for t in ("bbox", "segm"):
        assert all(v is None or 0.0 <= v <= 1.0 for v in rep[t].values())
    # The files agree with each other: counts = confusion row/column sums = predictions over the threshold.
    cm = np.array(json.loads((out / "confusion.json").read_text())["matrix"])
    for k, name in enumerate(["class_1", "class_3", "zebra"]):
        c = rep["counts"]["per_class"][name]
        cid = 11 + k
        assert c["pred_total"] == cm[:, k].sum() == sum(p["score"] >= 0.0 and p["category_id"] == cid for p in preds)
        assert c["gt_total"] == cm[k].sum() == sum(a["category_id"] == cid for a in anns)
        assert (out / "pr" / f"{cid}_{name}.png").is_file()
    # The saved predictions score the same through --predictions.
    assert rep["counts"]["per_class"]["class_3"]["pred_total"] > 0  # the sums above are not all 0 == 0
    assert main(["eval", "--data", str(tmp_path / "val.json"), "--predictions", str(out / "predictions.json"),
                 "--count-thresh", "0", "--out", str(tmp_path / "ev2"), "--no-plots"]) == 0  # images are not read: no failure
    rep2 = json.loads((tmp_path / "ev2" / "eval.json").read_text())
    assert rep2["segm"] == rep["segm"] and rep2["bbox"] == rep["bbox"] and rep2["counts"] == rep["counts"]
