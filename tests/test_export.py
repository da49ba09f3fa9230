"""Export round trips: ONNX / OpenVINO / TorchScript files give the eager model's outputs at two image sizes
and on an image without detections, carry their model card, and load by content."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_scene
from speed_models import CATEGORIES, r18_exports, r18_loaded

from masklab import Segmenter
from masklab.errors import MissingDependencyError, UsageError
from masklab.export import detect_export_format, read_card
from masklab.runtime.torch import TorchRuntime

pytestmark = pytest.mark.slow  # one trace + up to three exports per threshold (a few seconds each)

FORMATS = ("torchscript", "onnx", "openvino")


def _eager(image: np.ndarray):
    return TorchRuntime(r18_loaded().module).predict([image])[0]


def _export(fmt: str, score_thresh: float = 0.0):
    paths = r18_exports(score_thresh)
    if fmt not in paths:
        pytest.skip(f"{fmt} runtime not installed")
    return paths[fmt]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("size_hw", [(180, 240), (150, 310)])
def test_export_round_trip_matches_eager(fmt, size_hw):
    image = make_scene(*size_hw, seed=3)
    ref = _eager(image)
    seg = Segmenter(_export(fmt), device="cpu", score_thresh=0.0)
    got = seg.predict([image])[0]
    assert len(ref.scores) == 8  # the export's baked max_detections: the comparison is not vacuous
    assert len(got) == len(ref.scores)
    # Same instances in the same order: different kernels sum fp32 in a different order, so boxes move by
    # well under a hundredth of a pixel and scores by ~1e-6 (seen: 5e-5 px, 3e-7).
    np.testing.assert_allclose(got.boxes, ref.boxes, atol=1e-2)
    np.testing.assert_allclose(got.scores, ref.scores, atol=1e-4)
    np.testing.assert_array_equal(got.class_ids, ref.class_ids)
    assert got.labels == tuple(CATEGORIES[i] for i in ref.class_ids)
    assert got.masks.shape == (8, *size_hw)
    # a pixel whose probability sits within ~1e-6 of the 0.5 threshold may flip; nothing more
    assert (got.masks != ref.masks).mean() < 1e-4


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_with_no_detections(fmt):
    path = _export(fmt, score_thresh=0.99)  # random r18 scores are ~0.3: nothing passes 0.99
    image = make_scene(160, 200, seed=5)
    assert len(_eager(image).scores) > 0  # the same image does give detections at threshold 0
    inst = Segmenter(path, device="cpu", score_thresh=0.99).predict([image])[0]
    assert len(inst) == 0
    assert inst.masks.shape == (0, 160, 200) and inst.boxes.shape == (0, 4)


@pytest.mark.parametrize("fmt", FORMATS)
def test_exported_file_carries_its_card(fmt):
    path = _export(fmt)
    card = read_card(path)
    assert card.export_format == fmt
    assert card.categories == CATEGORIES
    assert card.max_detections == 8 and card.min_size == 160 and card.proposals == 200 and card.score_thresh == 0.0
    assert card.image_mean == pytest.approx([0.485, 0.456, 0.406])
    sidecar = json.loads(path.with_name(path.name + ".card.json").read_text())
    assert sidecar["categories"] == list(CATEGORIES)
    seg = Segmenter(path, device="cpu", score_thresh=0.0)
    assert seg.spec.categories == CATEGORIES
    assert seg.runtime.name in ("torchscript", "onnx", "openvino")


def test_exported_file_refuses_options_it_cannot_honour():
    path = _export("torchscript")
    with pytest.raises(UsageError, match="min_size=160"):
        Segmenter(path, device="cpu", score_thresh=0.0, min_size=300)
    with pytest.raises(UsageError, match="do not pass --weights"):
        Segmenter(path, weights=path, device="cpu")
    with pytest.raises(UsageError, match="backend 'auto' or 'torchscript'"):
        Segmenter(path, device="cpu", backend="openvino")
    low = _export("torchscript", score_thresh=0.99)
    with pytest.raises(UsageError, match="cannot return lower scores"):
        Segmenter(low, device="cpu", score_thresh=0.5)


def test_pt_is_told_apart_by_content(tmp_path):
    state = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, state)
    assert detect_export_format(state) is None
    assert detect_export_format(_export("torchscript")) == "torchscript"
    with pytest.raises(UsageError, match="not an exported masklab model"):
        read_card(state)


def test_cli_export_then_segment(tmp_path, small_weights):
    from masklab.cli import main

    out = tmp_path / "small.pt"
    code = main(["export", "--format", "torchscript", "--model", str(small_weights), "--out", str(out),
                 "--min-size", "96", "--max-size", "128", "--max-detections", "5", "--score-thresh", "0.0"])
    assert code == 0
    card = read_card(out)
    # a state dict holds no class names: the card has what Segmenter(weights) would show
    assert card.categories == ("__background__", "class_1", "class_2", "class_3")
    assert card.max_size == 128 and card.max_detections == 5 and card.score_thresh == 0.0
    image = make_scene(100, 130, seed=1)
    ref = Segmenter(small_weights, device="cpu", score_thresh=0.0, min_size=96, max_size=128, max_detections=5,
                    backend="torch").predict([image])[0]
    got = Segmenter(out, device="cpu", score_thresh=0.0).predict([image])[0]
    assert len(got) == len(ref) == 5
    # this random model's scores tie, so compare as sets: every eager box has an exported twin
    d = np.abs(ref.boxes[:, None, :] - got.boxes[None, :, :]).max(-1)
    assert d.min(axis=1).max() < 1e-2


def test_cli_export_rejects_wrong_suffix(tmp_path, small_weights):
    from masklab.cli import main

    assert main(["export", "--format", "onnx", "--model", str(small_weights), "--out", str(tmp_path / "m.xml")]) == 2


def test_missing_runtime_names_the_pip_line(monkeypatch):
    import importlib

    from masklab.export import require

    real = importlib.import_module

    def fake(name, *a, **k):
        if name == "openvino":
            raise ImportError("No module named 'openvino'")
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(MissingDependencyError, match=r"pip install 'masklab\[openvino\]'"):
        require("openvino")


@pytest.mark.parametrize("levels", [[2, 0, 1, 0, 3, 3, 1, 0, 2], [1, 1, 1], [0], []], ids=["mixed", "one-level", "one-roi", "none"])
def test_merged_levels_equal_torchvision_scatter(levels):
    """The export's one-gather merge of the RoI pooler's levels puts every row where torchvision's
    per-level scatter does (levels with no RoIs and no RoIs at all included), value for value."""
    from torchvision.ops.poolers import _onnx_merge_levels

    from masklab.export.tracing import merge_levels

    lv = torch.tensor(levels, dtype=torch.int64)
    g = torch.Generator().manual_seed(len(levels))
    parts = [torch.randn(int((lv == k).sum()), 5, 7, 7, generator=g) for k in range(4)]
    ours, theirs = merge_levels(lv, parts), _onnx_merge_levels(lv, parts)
    assert ours.shape == theirs.shape == (len(levels), 5, 7, 7)
    assert torch.equal(ours, theirs)
    if levels:  # rows really moved: RoI 0 of the mixed case is level 2's first row
        k = levels[0]
        assert torch.equal(ours[0], parts[k][0])


def test_openvino_nms_stops_at_the_boxes_kept():
    """The OpenVINO file's two NMS ops select no more boxes than torchvision keeps (the box head's: the
    baked max_detections; the RPN's: its proposals); the round-trip test above holds them to eager's output."""
    ov = pytest.importorskip("openvino")
    path = _export("openvino")
    card = read_card(path)
    limits = {}
    for op in ov.Core().read_model(str(path)).get_ops():
        if op.get_type_name() == "NonMaxSuppression":
            limits[op.get_friendly_name().split("/")[0].rsplit(":", 1)[-1].rsplit(".", 1)[-1]] = op.input_value(2).get_node().get_vector().tolist()
    assert limits == {"roi_heads": [card.max_detections], "rpn": [card.proposals]}
    assert card.max_detections == 8
