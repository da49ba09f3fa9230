"""Golden expect-files: the per-image JSON that seeded or shipped models give on fixed images.

Any change to what a user gets from ``masklab segment`` / ``Segmenter`` (labels, ids, scores, boxes,
measurements, masks) fails here. When a change is intended, regenerate and review the diff:

    .venv/bin/python -m pytest tests/test_golden.py --accept     # or MASKLAB_ACCEPT=1
    git diff tests/golden/

Cases: the shipped demo model (trained, so it detects real shapes) through the CLI on three shapes scenes;
the default architecture (``maskrcnn_resnet50_fpn_v2``) with seeded random weights through the API.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from masklab.structures.masks import decode_rle

GOLDEN = Path(__file__).parent / "golden"
DEMO_MODEL = Path(__file__).parents[1] / "masklab" / "assets" / "shapes_small.safetensors"
SHAPES = sorted(GOLDEN.glob("shapes_*.png"))

# Tolerances. Scores, boxes and measurements are fp32 results whose summation order depends on the BLAS
# and CPU kernels; 1e-4 in score and 0.05 px in box edges is far below any real change (a changed
# threshold, resize or class mapping moves them by orders of magnitude more). Masks: a pixel on the
# 0.5-probability boundary may flip with such rounding, so a mask must keep IoU >= 0.99 with its golden
# mask and its area within 1%.
SCORE_ATOL = 1e-4
BOX_ATOL = 0.05
MASK_MIN_IOU = 0.99


def _compare(got: dict, want: dict, where: str) -> None:
    for key in ("image", "width", "height", "model"):
        assert got[key] == want[key], f"{where}: {key} {got[key]!r} != golden {want[key]!r}"
    gi, wi = got["instances"], want["instances"]
    assert [(d["id"], d["label"], d["class_id"]) for d in gi] == [(d["id"], d["label"], d["class_id"]) for d in wi], where
    h, w = want["height"], want["width"]
    for g, e in zip(gi, wi):
        at = f"{where} instance {e['id']} ({e['label']})"
        assert abs(g["score"] - e["score"]) <= SCORE_ATOL, at
        np.testing.assert_allclose(g["bbox_xyxy"], e["bbox_xyxy"], atol=BOX_ATOL, err_msg=at)
        assert abs(g["area_px"] - e["area_px"]) <= max(2, 0.01 * e["area_px"]), at
        np.testing.assert_allclose(g["perimeter_px"], e["perimeter_px"], rtol=0.02, atol=1.0, err_msg=at)
        mg, me = decode_rle([g["rle"]], (h, w))[0], decode_rle([e["rle"]], (h, w))[0]
        union = np.logical_or(mg, me).sum()
        assert union == 0 or np.logical_and(mg, me).sum() / union >= MASK_MIN_IOU, at


def _check(name: str, got: dict, accept: bool) -> None:
    got = {**got, "image": Path(got["image"]).name}  # the CLI records the path it was given
    path = GOLDEN / f"{name}.json"
    if accept:
        path.write_text(json.dumps(got, indent=1) + "\n", encoding="utf-8")
        return
    assert path.is_file(), f"missing golden file {path}: run pytest {__file__} --accept and review it"
    _compare(got, json.loads(path.read_text(encoding="utf-8")), name)


def test_golden_images_are_there():
    assert len(SHAPES) == 3 and (GOLDEN / "scene_180x240.png").is_file()


@pytest.mark.slow
def test_cli_json_of_the_shipped_demo_model(tmp_path, accept):
    """``masklab segment`` with the shipped demo model: real detections of real classes."""
    from masklab.cli import main

    out = tmp_path / "out"
    code = main(["segment", *map(str, SHAPES), "--model", str(DEMO_MODEL), "--out", str(out), "--viz", "none",
                 "--no-progress", "--device", "cpu"])
    assert code == 0
    labels = set()
    for png in SHAPES:
        got = json.loads((out / f"{png.stem}.json").read_text(encoding="utf-8"))
        labels |= {d["label"] for d in got["instances"]}
        _check(f"demo_{png.stem}", got, accept)
    # the scenes hold squares, circles and triangles: a golden file of nothing would check nothing
    assert labels == {"square", "circle", "triangle"}


@pytest.mark.slow
def test_api_json_of_the_default_architecture(v2_weights, accept):
    """``Segmenter`` on the default architecture, seeded random weights (distinct scores), small input."""
    from masklab import Segmenter, load_image
    from masklab.io.formats.writer import image_record

    seg = Segmenter("maskrcnn_resnet50_fpn_v2", weights=v2_weights, device="cpu", score_thresh=0.0,
                    max_detections=12, min_size=256, max_size=384)
    image = GOLDEN / "scene_180x240.png"
    inst = seg(load_image(image).array)
    assert len(inst) == 12  # max_detections: never a vacuous comparison
    _check("v2_random_scene", image_record(image.name, inst, seg.spec.name), accept)


def test_compare_catches_a_changed_output():
    """The comparison itself fails on the changes it exists to catch."""
    want = json.loads((GOLDEN / "v2_random_scene.json").read_text(encoding="utf-8"))
    _compare(want, want, "self")
    for mutate in (
        lambda d: d["instances"][0].update(score=d["instances"][0]["score"] + 1e-3),
        lambda d: d["instances"][0].update(label="other"),
        lambda d: d["instances"][1]["bbox_xyxy"].__setitem__(0, d["instances"][1]["bbox_xyxy"][0] + 0.5),
        lambda d: d["instances"].pop(),
        lambda d: d.update(model="another"),
    ):
        changed = json.loads(json.dumps(want))
        mutate(changed)
        with pytest.raises(AssertionError):
            _compare(changed, want, "mutated")
