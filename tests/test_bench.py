"""masklab bench: case parsing, the instance-matching rule, and a tiny end-to-end run of the CLI table."""

from __future__ import annotations

import json

import numpy as np
import pytest

from masklab.bench import BenchCase, generated_images, match_instances, parse_case, postprocess_cost
from masklab.errors import UsageError
from masklab.settings import InferenceSettings
from masklab.structures.instances import Instances


def _case(backend: str, precision: str, **knobs) -> BenchCase:
    return BenchCase(InferenceSettings(backend=backend, precision=precision, **knobs))


@pytest.mark.parametrize(
    ("text", "expected", "error"),
    [
        ("torch", _case("torch", "fp32"), None),
        ("openvino:bf16", _case("openvino", "bf16"), None),
        ("torch-fast:bf16:min_size=480,proposals=300", _case("torch-fast", "bf16", min_size=480, proposals=300), None),
        ("torch::score_thresh=0.3", _case("torch", "fp32", score_thresh=0.3), None),
        ("torch:fp32:speed=9", None, "unknown knob"),
        ("torch:fp32:proposals=many", None, "needs a int"),
        ("torch:fp32:min_sise=480", None, "unknown knob 'min_sise'.*min_size, max_size.*did you mean 'min_size'"),
        ("torch:fp32:proposals=0", None, "proposals must be a positive integer"),
        ("torchvison", None, "unknown backend 'torchvison'.*did you mean 'torchvision'"),
        ("torchvision:bf16", None, "baseline runs torchvision's eager fp32 module"),
        ("int8", None, "'int8' in case 'int8' is a precision.*openvino:int8"),
        (":fp32", None, "backend\\[:precision"),
        ("a:b:c:d", None, "backend\\[:precision"),
    ],
)
def test_parse_case(text, expected, error):
    if error:
        with pytest.raises(UsageError, match=error):
            parse_case(text)
    else:
        assert parse_case(text) == expected


def test_case_settings_and_label():
    base = InferenceSettings(model="small", weights="random", device="cpu")
    ref = parse_case("torchvision", base=base)
    assert ref.baseline and ref.backend == "torchvision" and ref.label == "torchvision:fp32"
    assert ref.settings == base.replace(backend="torch")  # the eager module torchvision's call runs
    knob = parse_case("openvino:bf16:proposals=300,min_size=480,score_thresh=0", base=base)
    assert not knob.baseline and knob.settings == base.replace(
        backend="openvino", precision="bf16", proposals=300, min_size=480, score_thresh=0.0
    )
    assert knob.label == "openvino:bf16:min_size=480,proposals=300,score_thresh=0.0"  # knobs in KNOBS order
    assert parse_case("torch").settings.score_thresh is None  # None = the model's default


def _inst(boxes, class_ids, scores, masks):
    return Instances(boxes=np.array(boxes, np.float32), masks=masks, scores=scores, class_ids=class_ids,
                     labels=[str(c) for c in class_ids], image_size=masks.shape[1:])


def test_match_instances_rule():
    m = np.zeros((2, 40, 40), bool)
    m[0, 5:15, 5:15] = True
    m[1, 20:35, 20:30] = True
    ref = _inst([[5, 5, 15, 15], [20, 20, 30, 35]], [1, 2], [0.9, 0.8], m)
    same = match_instances(ref, ref)
    assert same == {"matched": 2, "n_ref": 2, "max_box_delta": 0.0, "max_score_delta": 0.0}

    shifted = m.copy()
    shifted[1] = np.roll(m[1], 3, axis=1)  # IoU 70/130 = 0.54 < 0.9: not a match
    cand = _inst([[5, 5, 15, 15.5], [23, 20, 33, 35]], [1, 2], [0.85, 0.8], shifted)
    s = match_instances(ref, cand)
    assert s["matched"] == 1 and s["max_box_delta"] == pytest.approx(0.5) and s["max_score_delta"] == pytest.approx(0.05)

    other_class = _inst([[5, 5, 15, 15], [20, 20, 30, 35]], [3, 2], [0.9, 0.8], m)
    assert match_instances(ref, other_class)["matched"] == 1  # same mask, wrong class: not matched
    empty = Instances.empty((40, 40))
    assert match_instances(ref, empty)["matched"] == 0 and match_instances(empty, ref)["n_ref"] == 0


def test_generated_images_and_postprocess_cost():
    a, b = generated_images(2, size_hw=(60, 80), seed=1)
    assert a.shape == (60, 80, 3) and a.dtype == np.uint8 and not np.array_equal(a, b)
    assert np.array_equal(a, generated_images(1, size_hw=(60, 80), seed=1)[0])  # seeded
    assert 0 < postprocess_cost(size_hw=(60, 80), n=5, repeat=1) < 60


@pytest.mark.slow
def test_bench_cli_prints_the_table(small_weights, capsys):
    from masklab.cli import main

    args = ["bench", "--model", str(small_weights), "--size", "96x128", "--repeat", "2",
            "--case", "torchvision::score_thresh=0", "--case", "torch::score_thresh=0"]
    # peak microbenchmark and the fresh-process cold start are the slow parts: run them once, here
    assert main(args + ["--no-flops"]) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("| ")]
    assert lines[0].startswith("| case | ran | median s | p90 s | img/s")
    cells = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines[1:]]
    rows = {c[0]: c for c in cells}
    ref, ours = rows["torchvision:fp32:score_thresh=0.0"], rows["torch:fp32:score_thresh=0.0"]
    assert set(rows) == {ref[0], ours[0]}
    assert ref[9] == "ref" and ours[1] == "torch fp32"  # what ran
    assert ours[9] == "100.0%"  # our eager path = torchvision's, instance for instance (100 of them)
    assert float(ours[2]) > 0  # median s
    assert float(ours[12]) > 0 and float(ours[14]) > 100  # cold start s, RSS MB
    # `masklab segment one.png` in a fresh process, minus the model's own time: a positive overhead
    assert float(ours[13]) > 0 and ref[13] == "-"  # (the baseline is not a masklab command)
    assert "measured peak: fp32" in out and "post-processing (paste + RLE" in out


@pytest.mark.slow
def test_bench_json(small_weights, capsys):
    from masklab.cli import main

    assert main(["bench", "--model", str(small_weights), "--size", "96x128", "--repeat", "1", "--json",
                 "--case", "torch::score_thresh=0", "--case", "torch-fast::score_thresh=0",
                 "--case", "torch::score_thresh=0,max_detections=3", "--no-cold", "--no-peak"]) == 0
    report = json.loads(capsys.readouterr().out)
    ref, fast, knob = report["rows"]
    assert ref["instances"] == 100  # this random model's scores all sit near 0.5: threshold 0 keeps 100
    assert ref["case"] == "torch:fp32:score_thresh=0.0" and ref["gflop"] > 0 and ref["median_s"] > 0
    assert fast["matched"] is not None and 0 <= fast["matched"] <= 1
    # channels-last fp32 finds the same objects (0 would pass the line above); near-tied scores may swap a few
    assert fast["instances"] == ref["instances"] and fast["matched"] >= 0.9
    assert knob["instances"] == 3 and knob["matched"] == pytest.approx(3 / ref["instances"])
    assert report["settings"]["image_sizes"] == ["96x128"]


def test_cold_start_reports_the_fresh_process_own_peak_memory(small_weights, tmp_path):
    """Linux carries ru_maxrss over fork + exec: a child of a big process would report the parent's size.
    The parent here holds ~2 GB of touched memory; the one-image child must report far less."""
    from PIL import Image

    from masklab.bench import cold_start

    Image.fromarray(np.full((96, 128, 3), 120, np.uint8)).save(tmp_path / "one.png")
    ballast = np.ones(2 * 1024**3 // 8)  # touched: really resident in this (parent) process
    settings = InferenceSettings(model=str(small_weights), device="cpu", backend="torch", min_size=96, max_size=128)
    c = cold_start(settings, image_path=str(tmp_path / "one.png"))
    assert ballast[-1] == 1.0
    assert 50 < c["peak_rss_mb"] < 1600, c


def test_report_json_round_trip_and_failed_row():
    from masklab.bench import BenchReport, BenchRow, format_table

    rows = [BenchRow(case="torch:fp32", backend="torch", precision="fp32", median_s=0.5, images_per_s=2.0, speedup=1.0),
            BenchRow(case="onnx:fp32", backend="onnx", precision="fp32", error="UsageError: onnxruntime is not installed")]
    report = BenchReport(rows=rows, machine={"cpu": "x", "threads": 2}, postprocess={"paste_rle_100_s": 0.01},
                         settings={"model": "small", "image_sizes": ["96x128"], "images": 1, "repeat": 1})
    doc = json.loads(json.dumps(report.to_json()))
    assert BenchReport.from_json(doc) == report
    table = format_table(report)
    assert "| onnx:fp32 | failed: UsageError: onnxruntime is not installed |" in table
    assert "(2.0% of the first case's latency)" in table  # 10 ms of 500 ms
