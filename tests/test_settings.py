"""One settings object, one model card, one place for defaults, and a structure that stays checkable."""

from __future__ import annotations

import dataclasses
import json
import sys
import zipfile
from pathlib import Path

import pytest

from masklab.errors import UsageError
from masklab.models.card import CARD_SCHEMA, ModelCard
from masklab.settings import MODEL_OPTIONS, InferenceSettings

ROOT = Path(__file__).resolve().parents[1]
CARDS = Path(__file__).parent / "data" / "cards"


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"backend": "torchfast"}, r"backend must be one of .*did you mean 'torch-fast'"),
        ({"precision": "bf15"}, r"precision must be one of .*did you mean 'bf16'"),
        ({"device": "gpu"}, "device must be auto, cpu or cuda"),
        ({"score_thresh": 1.5}, r"score_thresh must be in \[0, 1\], found 1.5"),
        ({"nms_thresh": -0.1}, r"nms_thresh must be in \[0, 1\]"),
        ({"max_detections": 0}, "max_detections must be a positive integer"),
        ({"proposals": 2.5}, "proposals must be a positive integer"),
        ({"min_size": 800, "max_size": 600}, r"min_size \(800\) must not exceed max_size \(600\)"),
        ({"classes": "person"}, "classes must be a list of names"),
    ],
)
def test_bad_settings_are_clear_errors_without_loading_anything(changes, match):
    with pytest.raises(UsageError, match=match):
        InferenceSettings(**changes)


def test_settings_round_trip_and_model_defaults():
    s = InferenceSettings(model=Path("m.pth"), classes=["cat", "dog"], score_thresh=0.3)
    assert s.model == "m.pth" and s.classes == ("cat", "dog")
    assert InferenceSettings.from_json(json.loads(json.dumps(s.to_json()))) == s
    card = ModelCard(name="m", arch="a", categories=("__background__", "cat", "dog"), min_size=128, max_size=160,
                     score_thresh=0.5, nms_thresh=0.4, max_detections=9, proposals=77)
    filled = s.with_model_defaults(card.defaults())
    # the user's value wins; every other option comes from the card
    assert (filled.score_thresh, filled.nms_thresh, filled.max_detections, filled.proposals) == (0.3, 0.4, 9, 77)
    block = s.to_run_json(card, weights_source="m.pth")
    assert block["model"] == "m" and block["arch"] == "a" and block["min_size"] == 128 and block["weights"] == "m.pth"
    assert all(block[k] is not None for k in MODEL_OPTIONS)


def _parse(argv):
    from masklab.cli import build_parser

    return build_parser().parse_args(argv)


def test_every_command_builds_the_same_settings_from_the_same_flags():
    flags = ["--model", "small", "--weights", "w.pth", "--score-thresh", "0.3", "--nms-thresh", "0.4",
             "--max-detections", "7", "--proposals", "50", "--min-size", "96", "--max-size", "128"]
    want = InferenceSettings(model="small", weights="w.pth", score_thresh=0.3, nms_thresh=0.4, max_detections=7,
                             proposals=50, min_size=96, max_size=128)
    commands = {
        "segment": ["segment", "x.png", "--out", "o"],
        "eval": ["eval", "--data", "gt.json"],
        "serve": ["serve"],
        "export": ["export", "--format", "onnx", "--out", "m.onnx"],
    }
    for name, argv in commands.items():
        got = InferenceSettings.from_args(_parse(argv + flags))
        assert got == want, name
    seg = InferenceSettings.from_args(_parse(["segment", "x", "--out", "o", "--classes", "cat, dog", "--backend",
                                              "openvino", "--precision", "bf16", "--device", "cpu"]))
    assert seg.classes == ("cat", "dog") and (seg.backend, seg.precision, seg.device) == ("openvino", "bf16", "cpu")


def test_command_defaults_differ_only_where_the_command_says_so():
    from masklab.settings import LOW_SCORE_THRESH

    assert InferenceSettings.from_args(_parse(["segment", "x", "--out", "o"])) == InferenceSettings()
    assert InferenceSettings.from_args(_parse(["eval", "--data", "g.json"])).score_thresh == LOW_SCORE_THRESH
    assert InferenceSettings.from_args(_parse(["serve"])).score_thresh == LOW_SCORE_THRESH
    assert InferenceSettings.from_args(_parse(["serve", "--min-score", "0.2"])).score_thresh == 0.2  # old flag
    assert InferenceSettings.from_args(_parse(["bench"])).device == "cpu"


def test_every_setting_is_a_segment_flag_and_a_segmenter_keyword(small_weights):
    from masklab import Segmenter

    parser_dests = set(vars(_parse(["segment", "x", "--out", "o"])))
    fields = {f.name for f in dataclasses.fields(InferenceSettings)} - {"threads"}  # threads: MASKLAB_NUM_THREADS
    assert fields <= parser_dests
    with pytest.raises(UsageError, match="unknown option 'score_treshold'; did you mean 'score_thresh'"):
        Segmenter(small_weights, device="cpu", score_treshold=0.2)


def test_segmenter_settings_and_keywords_agree(small_weights):
    from masklab import Segmenter

    kw = Segmenter(small_weights, device="cpu", score_thresh=0.2, min_size=64, max_size=96, rpn_post_nms_top_n=40)
    st = Segmenter(settings=InferenceSettings(model=str(small_weights), device="cpu", score_thresh=0.2, min_size=64,
                                              max_size=96, proposals=40))
    assert kw.inference == st.inference and kw.settings() == st.settings()
    assert kw.inference.proposals == 40 and kw.loaded.module.rpn._post_nms_top_n["testing"] == 40
    # None became the model's own default, written out
    assert kw.inference.nms_thresh == 0.5 and kw.inference.max_detections == 100


def test_segmenter_leaves_the_process_threads_alone(small_weights):
    import torch

    from masklab import Segmenter

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        Segmenter(small_weights, device="cpu")
        assert torch.get_num_threads() == 1  # constructing a library object changes nothing process-wide
        Segmenter(small_weights, device="cpu", threads=2)
        assert torch.get_num_threads() == 2  # unless asked for explicitly
    finally:
        torch.set_num_threads(before)


# -- the model card -------------------------------------------------------------------------------------
def test_every_card_masklab_wrote_before_still_reads():
    trained = ModelCard.from_json(json.loads((CARDS / "trained_v1.json").read_text()))
    assert trained.weights.file == "shapes_small.safetensors" and trained.weights.storage == "float16"
    assert trained.metrics["mask_ap"] > 0.7 and trained.trained["steps"] == 1495 and trained.min_size == 128
    assert trained.extra["packaged_with"].startswith("masklab train --package")
    export = ModelCard.from_json(json.loads((CARDS / "export_v1.card.json").read_text()))
    assert (export.score_thresh, export.max_detections, export.min_size, export.max_size) == (0.2, 7, 96, 128)
    assert export.proposals == 300 and export.image_mean == pytest.approx((0.485, 0.456, 0.406))
    zoo = ModelCard.from_json(json.loads((CARDS / "zoo_v0.json").read_text()))
    assert zoo.weights.url.endswith("maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth") and zoo.metrics["mask_ap"] == 41.8
    for card in (trained, export, zoo):
        doc = card.to_json()
        assert doc["format"] == CARD_SCHEMA and ModelCard.from_json(json.loads(json.dumps(doc))) == card


def test_a_card_from_the_future_or_not_a_card_is_a_clear_error():
    with pytest.raises(UsageError, match="newer than this masklab"):
        ModelCard.from_json({"format": "masklab-model-card/9", "name": "x"})
    with pytest.raises(UsageError, match="not a masklab model card"):
        ModelCard.from_json({"hello": 1})


def test_an_export_with_a_version_1_card_still_runs(tmp_path):
    """A TorchScript file exported before the card schema changed: its v1 card is read and honoured."""
    sys.path.insert(0, str(Path(__file__).parent))
    from speed_models import r18_exports

    from masklab import Segmenter
    from masklab.models.exported import TS_CARD_FILE

    exports = r18_exports(0.0)
    new = ModelCard.from_json(json.loads(Path(str(exports["torchscript"]) + ".card.json").read_text()))
    v1 = json.loads((CARDS / "export_v1.card.json").read_text())
    v1.update(name=new.name, arch=new.arch, categories=list(new.categories), num_classes=new.num_classes,
              min_size=new.min_size, max_size=new.max_size, tags=[])
    v1["options"].update(score_thresh=new.score_thresh, nms_thresh=new.nms_thresh, max_detections=new.max_detections,
                         min_size=new.min_size, max_size=new.max_size, rpn_post_nms_top_n=new.proposals)
    old = tmp_path / "old.pt"
    with zipfile.ZipFile(exports["torchscript"]) as src, zipfile.ZipFile(old, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(item, json.dumps(v1).encode() if item.filename.endswith("extra/" + TS_CARD_FILE) else data)
    seg = Segmenter(old, device="cpu")
    assert seg.card.max_detections == new.max_detections and seg.spec.categories == new.categories
    from conftest import make_scene

    assert len(seg(make_scene(160, 200, seed=5))) == new.max_detections  # score 0 baked in: every detection


# -- structure ------------------------------------------------------------------------------------------
def test_structure_has_no_cycles_layer_breaks_or_oversized_code():
    sys.path.insert(0, str(ROOT / "tools"))
    import structure

    m = structure.measure()
    assert m["modules"] > 100 and m["imports"] > 300  # it really read the package
    assert m["module_cycles"] == [] and m["folder_cycles"] == []
    assert m["layer_violations"] == []
    assert m["modules_over_limit"] == [] and m["functions_over_limit"] == []
    # model-option defaults live in settings.py and, per architecture, in the model table (and matterport's
    # own config, which the table reads); nowhere else
    files = {d.split(":")[0] for d in m["option_declarations"]}
    assert files <= {"masklab/models/zoo.py", "masklab/models/matterport/config.py"}, sorted(files)


def test_structure_tool_sees_a_cycle_hidden_in_a_function(tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    import structure

    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert structure.strongly_connected(graph) == [["a", "b", "c"]]
    pkg = tmp_path / "masklab"
    (pkg / "low").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "low" / "__init__.py").write_text("def f():\n    from masklab.high import g\n")
    (pkg / "high.py").write_text("from masklab.low import f\n")
    mods = {"masklab", "masklab.low", "masklab.high"}
    old_root = structure.ROOT
    try:
        structure.ROOT = tmp_path
        found = structure.imports_of(pkg / "low" / "__init__.py", mods)
    finally:
        structure.ROOT = old_root
    assert found == [("masklab.high", 2, True)]


def test_background_names_are_never_classes():
    from masklab.models.zoo import get_spec

    card = get_spec("matterport_r101_coco").card()  # matterport calls its background "BG"
    card.check_classes(["person", "dog"])
    for name in ("BG", "__background__", "N/A"):
        with pytest.raises(UsageError, match="unknown class names"):
            card.check_classes([name])
