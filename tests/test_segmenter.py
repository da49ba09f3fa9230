"""Step 1 acceptance: results equal torchvision's own model for the same weights; the tutorial dict."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import SMALL, make_scene
from PIL import Image

from masklab import Segmenter
from masklab.models.categories import COCO_MRCNN, COCO_TORCHVISION
from masklab.structures.masks import decode_rle


def _torchvision_reference(weights, image, score_thresh=0.0):
    """Run torchvision's maskrcnn_resnet50_fpn_v2 directly, the way its docs show."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn_v2
    from torchvision.transforms.functional import to_tensor

    model = maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=91, box_score_thresh=score_thresh, **SMALL)
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    with torch.no_grad():
        out = model([to_tensor(image)])[0]
    keep = np.array([COCO_TORCHVISION[i] != "N/A" for i in out["labels"].tolist()], bool)
    return {
        "boxes": out["boxes"].numpy()[keep],
        "scores": out["scores"].numpy()[keep],
        "labels": out["labels"].numpy()[keep],
        "masks": (out["masks"][:, 0] > 0.5).numpy()[keep],
    }


def _assert_same(inst, ref):
    assert len(inst) == len(ref["boxes"]) > 0
    np.testing.assert_allclose(inst.boxes, ref["boxes"], atol=1e-3, rtol=0)
    np.testing.assert_allclose(inst.scores, ref["scores"], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(inst.class_ids, ref["labels"])
    np.testing.assert_array_equal(inst.masks, ref["masks"])


@pytest.mark.slow
def test_api_and_cli_equal_torchvision(v2_weights, v2_segmenter, tmp_path):
    image = make_scene(150, 200, seed=3)
    ref = _torchvision_reference(v2_weights, image)
    # API, from a numpy array and from a PIL image.
    _assert_same(v2_segmenter(image), ref)
    _assert_same(v2_segmenter(Image.fromarray(image)), ref)
    # CLI, in a separate process, from a PNG file (lossless).
    Image.fromarray(image).save(tmp_path / "scene.png")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "masklab", "segment", str(tmp_path / "scene.png"), "--out", str(out),
           "--weights", str(v2_weights), "--score-thresh", "0", "--min-size", "256", "--max-size", "384", "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "scene.json").read_text())
    assert (doc["width"], doc["height"], doc["model"]) == (200, 150, "maskrcnn_resnet50_fpn_v2")
    inst = doc["instances"]
    assert len(inst) == len(ref["boxes"])
    np.testing.assert_allclose([d["bbox_xyxy"] for d in inst], ref["boxes"], atol=1e-3, rtol=0)
    np.testing.assert_allclose([d["score"] for d in inst], ref["scores"], atol=1e-5, rtol=0)
    assert [d["class_id"] for d in inst] == ref["labels"].tolist()
    assert [d["label"] for d in inst] == [COCO_TORCHVISION[i] for i in ref["labels"]]
    np.testing.assert_array_equal(decode_rle([d["rle"] for d in inst], (150, 200)), ref["masks"])
    assert [d["area_px"] for d in inst] == ref["masks"].sum(axis=(1, 2)).tolist()
    assert (out / "scene.png").is_file() and (out / "summary.csv").is_file()
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["score_thresh"] == 0.0 and run["settings"]["weights"] == str(v2_weights)
    assert run["versions"]["torch"] == torch.__version__


def test_detect_returns_the_tutorial_dict(v2_segmenter):
    image = make_scene(120, 160, seed=5)
    r = v2_segmenter.detect([image])[0]
    assert set(r) == {"rois", "masks", "class_ids", "scores"}
    n = r["masks"].shape[-1]
    assert n > 0
    assert r["rois"].dtype == np.int32 and r["rois"].shape == (n, 4)
    assert r["masks"].dtype == bool and r["masks"].shape == (120, 160, n)
    assert r["class_ids"].dtype == np.int32 and r["scores"].dtype == np.float32
    assert v2_segmenter.class_names == COCO_MRCNN and len(COCO_MRCNN) == 81 and COCO_MRCNN[0] == "BG"
    inst = v2_segmenter(image)
    # rois are y1, x1, y2, x2 (the boxes' rows and columns swapped), and class ids index class_names.
    np.testing.assert_array_equal(r["rois"], np.round(inst.boxes[:, [1, 0, 3, 2]]).astype(np.int32))
    assert [COCO_MRCNN[i] for i in r["class_ids"]] == list(inst.labels)
    with pytest.raises(ValueError, match="list of images"):
        v2_segmenter.detect(image)


def test_batch_call_and_class_filter(v2_weights, v2_segmenter):
    wanted = {"clock", "donut"}
    images = [make_scene(seed=1), make_scene(seed=2)]
    # Unfiltered, the seeded weights find clocks and donuts on both images, and other classes too.
    everything = v2_segmenter(images)
    for inst in everything:
        assert wanted <= set(inst.labels) and set(inst.labels) - wanted
    seg = Segmenter("maskrcnn_resnet50_fpn_v2", weights=v2_weights, device="cpu", score_thresh=0.0, classes=sorted(wanted), **SMALL)
    out = seg(images)
    assert isinstance(out, list) and len(out) == 2
    for inst, full in zip(out, everything):
        assert len(inst) > 0 and set(inst.labels) == wanted
        assert list(inst.labels) == [lab for lab in full.labels if lab in wanted]  # the same detections, in order
        np.testing.assert_array_equal(inst.scores, full.scores[np.isin(full.labels, sorted(wanted))])
    text = seg.describe()
    for key in ("MASK_SHAPE", "28x28", "IMAGE_MIN_DIM", "256", "DETECTION_MIN_CONFIDENCE", "cpu", str(v2_weights)):
        assert key in text


def test_predict_takes_one_image_alone_as_a_list_of_one(v2_segmenter, tmp_path):
    image = make_scene(seed=1)
    whole = v2_segmenter(image)
    assert len(whole) > 0  # the seeded weights find objects here: an empty result would prove nothing
    Image.fromarray(image).save(tmp_path / "one.png")
    for alone in (image, Image.fromarray(image), tmp_path / "one.png", str(tmp_path / "one.png")):
        out = v2_segmenter.predict(alone)  # not one result per row of the array
        assert isinstance(out, list) and len(out) == 1
        assert out[0].image_size == image.shape[:2]
        np.testing.assert_array_equal(out[0].masks, whole.masks)
        np.testing.assert_array_equal(out[0].scores, whole.scores)
    assert len(v2_segmenter.predict(np.stack([image, image]))) == 2  # a (N, H, W, 3) array is N images


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"score_thresh": 1.5}, "score_thresh"),
        ({"classes": ["unicorn"]}, "unicorn"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_bad_arguments(v2_weights, kwargs, match):
    from masklab.errors import UsageError

    with pytest.raises(UsageError, match=match):
        Segmenter("maskrcnn_resnet50_fpn_v2", weights=v2_weights, **kwargs)


def test_unknown_model_names_the_known_ones():
    from masklab.errors import UsageError

    with pytest.raises(UsageError, match="maskrcnn_resnet50_fpn_v2"):
        Segmenter("maskrcnn_resnet9000")


def test_default_score_threshold_comes_from_the_model_entry(v2_weights):
    from masklab.models.zoo import MODELS

    seg = Segmenter("maskrcnn_resnet50_fpn_v2", weights=v2_weights, device="cpu")
    assert seg.score_thresh == 0.5 and seg.loaded.module.roi_heads.score_thresh == 0.5
    line = next(x for x in seg.describe().splitlines() if x.startswith("DETECTION_MIN_CONFIDENCE"))
    assert line.split()[-1] == "0.5"
    # The tutorial's weights keep the tutorial's DETECTION_MIN_CONFIDENCE.
    assert MODELS["matterport_r101_coco"].score_thresh == 0.7
    assert MODELS["matterport_r101_coco"].card().score_thresh == 0.7
