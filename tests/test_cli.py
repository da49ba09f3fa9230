"""The CLI end to end (in-process via masklab.cli.main, which is what the console script calls)."""

import csv
import json

import numpy as np
import pytest
from conftest import make_scene
from PIL import Image

from masklab import Segmenter
from masklab.cli import main
from masklab.io.inputs import expand_inputs

SMALL_ARGS = ["--score-thresh", "0.0", "--min-size", "128", "--max-size", "192", "--device", "cpu"]


def test_version_and_models(capsys):
    import importlib.metadata

    import masklab

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    # the installed distribution's version, as pip reports it, and the package's own
    assert masklab.__version__ == importlib.metadata.version("masklab")
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"masklab {masklab.__version__}"
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "maskrcnn_resnet50_fpn_v2 (default)" in out and "47.4" in out and "41.8" in out and "not cached" in out
    assert main(["models", "--json"]) == 0
    cards = json.loads(capsys.readouterr().out)
    assert {c["name"] for c in cards} >= {"maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2"}
    published = [c for c in cards if c["weights"]]
    assert {c["name"] for c in published} >= {"maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2"}  # COCO weights
    assert all(c["weights"]["url"].startswith("https://") for c in published)


def test_same_names_in_different_folders_never_collide(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        Image.fromarray(make_scene()).save(tmp_path / sub / "cat.png")
    Image.fromarray(make_scene()).save(tmp_path / "a" / "cat.jpg")
    items = expand_inputs([str(tmp_path / "a"), str(tmp_path / "b" / "cat.png")])
    stems = [i.stem for i in items]
    assert len(items) == 3 and len(set(stems)) == 3
    assert items == expand_inputs([str(tmp_path / "a"), str(tmp_path / "b" / "cat.png")])  # stable on rerun


def test_folder_run_with_a_broken_file(tmp_path, v2_weights, capsys):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(make_scene(seed=1)).save(src / "one.png")
    Image.fromarray(make_scene(seed=2)).save(src / "sub" / "one.png")
    (src / "broken.jpg").write_bytes(b"this is not a jpeg")
    out = tmp_path / "out"
    wanted = {"clock", "donut", "kite"}  # the seeded weights find clocks and donuts here, no kites
    code = main(["segment", str(src), "-r", "--out", str(out), "--weights", str(v2_weights), "--classes", "clock,donut,kite", *SMALL_ARGS])
    assert code == 1  # one input failed, the run finished
    jsons = sorted(p.name for p in out.glob("one*.json"))
    assert len(jsons) == 2 and len(list(out.glob("one*.png"))) == 2
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows].count("failed") == 1
    failed = next(r for r in rows if r["status"] == "failed")
    assert failed["image"].endswith("broken.jpg") and failed["error"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 2
    for r in ok:
        extra = set(r) - {"image", "status", "instances", "error"}
        assert extra <= wanted
        assert int(r["instances"]) == sum(int(r[c]) for c in extra) > 0
    run = json.loads((out / "run.json").read_text())
    assert run["succeeded"] == 2 and run["failed"][0]["image"].endswith("broken.jpg")
    assert run["settings"]["classes"] == ["clock", "donut", "kite"]
    doc = json.loads((out / jsons[0]).read_text())
    # The same model without --classes finds clocks and other classes on this image; the run kept exactly
    # the wanted ones, in the model's order.
    unfiltered = Segmenter("maskrcnn_resnet50_fpn_v2", weights=v2_weights, device="cpu", score_thresh=0.0,
                           min_size=128, max_size=192)(doc["image"])
    assert "clock" in unfiltered.labels and set(unfiltered.labels) - wanted
    assert [d["label"] for d in doc["instances"]] == [lab for lab in unfiltered.labels if lab in wanted]
    assert len(doc["instances"]) > 0  # the clocks above: the loop below checks something
    for d in doc["instances"]:
        assert set(d) >= {"id", "label", "class_id", "score", "bbox_xyxy", "area_px", "centroid_xy", "rle"}
        assert d["label"] in wanted and d["rle"]["size"] == [doc["height"], doc["width"]]
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "Traceback" not in err
    overlay = np.asarray(Image.open(out / jsons[0].replace(".json", ".png")))
    assert overlay.shape == (doc["height"], doc["width"], 3)


def test_usage_errors(tmp_path, capsys):
    assert main(["segment", str(tmp_path / "missing.jpg"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    Image.fromarray(make_scene()).save(tmp_path / "x.png")
    assert main(["segment", str(tmp_path / "x.png"), "--out", str(tmp_path / "o"), "--viz", "sparkles"]) == 2
    assert "sparkles" in capsys.readouterr().err
