"""int8 (``masklab quantize``): a calibration set without detections is refused with a message that says
so; the shipped shapes demo model, quantised on a few generated shapes images, runs through the OpenVINO
runtime and returns valid Instances with detections close to fp32's; ``precision="int8"`` finds the
model prepared in the cache, and says how to prepare one when there is none."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from masklab import Segmenter  # noqa: E402
from masklab.bench.agreement import match_instances  # noqa: E402
from masklab.cli import main  # noqa: E402
from masklab.data.calibration import calibration_images  # noqa: E402
from masklab.data.shapes import SHAPE_CLASSES, random_scene, write_shapes  # noqa: E402
from masklab.errors import UsageError  # noqa: E402
from masklab.export import export_model, read_card  # noqa: E402
from masklab.export.quantize import CalibrationError, quantize_ir, quantized_path  # noqa: E402
from masklab.models.loading import load_model  # noqa: E402
from masklab.runtime import converted_path  # noqa: E402
from masklab.settings import InferenceSettings  # noqa: E402

# the tests that use `irs` are slow: one export of the tiny model and two NNCF runs on it
slow = pytest.mark.slow

DEMO = str(Path(__file__).resolve().parents[1] / "masklab" / "assets" / "shapes_small.safetensors")
N_CALIB = 12  # the brief's 100-300 images are for real models; the shapes model is tiny and its scenes alike


def _scenes(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [random_scene(rng).image for _ in range(n)]


def _blank(n: int) -> list[np.ndarray]:
    """Plain grey images: nothing in them for the shapes model to find."""
    return [np.full((128, 128, 3), 127, np.uint8) for _ in range(n)]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory, monkeypatch):
    """A cache of this module's own: the prepared models written here must not change what backend 'auto'
    runs in the rest of the session (every test module shares one MASKLAB_HOME)."""
    monkeypatch.setenv("MASKLAB_HOME", str(tmp_path_factory.getbasetemp() / "quantize-home"))


@pytest.fixture(scope="module")
def irs(tmp_path_factory):
    """(fp32 IR, int8 IR) of the demo model; the int8 one calibrated on N_CALIB generated scenes."""
    folder = tmp_path_factory.mktemp("int8")
    fp32 = export_model(DEMO, fmt="openvino", out=folder / "core.xml")
    int8 = quantize_ir(fp32, _scenes(N_CALIB, seed=5), out=folder / "core-int8.xml", subset_size=N_CALIB,
                       calib_name="generated shapes")
    return fp32, int8


@slow
def test_refuses_calibration_without_detections(irs, tmp_path):
    fp32, _ = irs
    out = tmp_path / "q.xml"
    with pytest.raises(CalibrationError, match="finds no objects in any of the 6 calibration images") as e:
        quantize_ir(fp32, _blank(6), out=out, subset_size=6)
    assert "needs images on which the model finds objects" in str(e.value)
    assert not out.exists() and not out.with_suffix(".bin").exists()  # nothing half-written
    with pytest.raises(CalibrationError, match="no calibration images"):
        quantize_ir(fp32, [], out=out)


@slow
def test_int8_model_runs_and_returns_valid_instances(irs):
    fp32, int8 = irs
    card = read_card(int8)
    assert card.precision == "int8" and card.export_format == "openvino"
    q = card.quantization
    assert q["subset_size"] == N_CALIB and q["with_detections"] > 0 and q["calibration"] == "generated shapes"
    seg = Segmenter(int8, device="cpu")
    assert (seg.runtime.name, seg.runtime.precision, seg.card.precision) == ("openvino", "int8", "int8")
    assert seg.inference.precision == "int8"  # what runs is what the settings in force say
    ref = Segmenter(DEMO, device="cpu")  # eager fp32, the reference
    held_out = _scenes(8, seed=11)  # not the calibration scenes
    matched = n_ref = found = 0
    for image in held_out:
        inst, want = seg(image), ref(image)
        found += len(inst)
        n = len(inst)
        assert inst.image_size == (128, 128)
        assert inst.masks.shape == (n, 128, 128) and inst.masks.dtype == bool
        assert inst.boxes.shape == (n, 4) and np.all(inst.boxes[:, 2:] >= inst.boxes[:, :2])
        assert np.all((inst.boxes >= 0) & (inst.boxes <= 128))
        assert np.all(inst.scores >= seg.score_thresh) and np.all(inst.scores <= 1)
        assert set(inst.labels) <= set(SHAPE_CLASSES)
        assert all(m.any() for m in inst.masks)  # every kept instance has pixels
        s = match_instances(want, inst, iou_thresh=0.5)
        matched, n_ref = matched + s["matched"], n_ref + s["n_ref"]
    assert found > 0 and n_ref > 0
    # int8 is not exact; on these scenes it keeps (almost) every fp32 instance (seen: all but one of ~20)
    assert matched / n_ref >= 0.75


@slow
def test_fp32_ir_is_not_int8(irs):
    fp32, _ = irs
    with pytest.raises(UsageError, match="is not quantised; make an int8 model from it with `masklab quantize"):
        Segmenter(fp32, device="cpu", precision="int8")
    with pytest.raises(UsageError, match="is an int8 model: it runs at precision int8, not 'bf16'"):
        Segmenter(irs[1], device="cpu", precision="bf16")


@slow
def test_precision_int8_uses_the_prepared_model(irs):
    with pytest.raises(UsageError, match="no int8 model is prepared .*\n.*masklab quantize --model .* --calib"):
        Segmenter(DEMO, device="cpu", precision="int8")
    # what `masklab quantize` without --out writes: the int8 IR next to the cached fp32 conversion
    cached = quantized_path(converted_path(load_model(InferenceSettings(model=DEMO)), "openvino"))
    cached.parent.mkdir(parents=True, exist_ok=True)
    for suffix in (".xml", ".bin"):
        shutil.copy(irs[1].with_suffix(suffix), cached.with_suffix(suffix))
    try:
        seg = Segmenter(DEMO, device="cpu", precision="int8")
        assert (seg.runtime.name, seg.runtime.precision) == ("openvino", "int8")
        assert len(seg(_scenes(1, seed=11)[0])) > 0
    finally:
        shutil.rmtree(cached.parent)


@slow
def test_cli_quantize_from_a_dataset_and_refuses_a_blank_folder(irs, tmp_path, capsys):
    fp32, _ = irs
    data = write_shapes(tmp_path / "calib", n=4, seed=3)  # a COCO dataset: its images calibrate
    out = tmp_path / "cli-int8.xml"
    assert main(["quantize", "--model", str(fp32), "--calib", str(data), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    err = captured.err
    assert "Statistics collection" not in captured.out  # NNCF's progress bars on stderr: stdout stays the caller's
    assert f"-> {out}" in err and "calibrated on 4 of 4 images" in err
    assert read_card(out).precision == "int8"
    assert len(Segmenter(out, device="cpu")(_scenes(1, seed=11)[0])) > 0
    blank = tmp_path / "blank"
    blank.mkdir()
    from PIL import Image

    for i, im in enumerate(_blank(3)):
        Image.fromarray(im).save(blank / f"{i}.png")
    assert main(["quantize", "--model", str(fp32), "--calib", str(blank), "--out", str(tmp_path / "b.xml")]) == 2
    assert "finds no objects in any of the 3 calibration images" in capsys.readouterr().err
    assert not (tmp_path / "b.xml").exists()


@slow
def test_bench_int8_case_reports_agreement_with_fp32(irs):
    from masklab.bench import parse_case, run_bench

    base = InferenceSettings(model=DEMO, device="cpu")
    cached = quantized_path(converted_path(load_model(base), "openvino"))  # as `masklab quantize` prepares it
    cached.parent.mkdir(parents=True, exist_ok=True)
    for suffix in (".xml", ".bin"):
        shutil.copy(irs[1].with_suffix(suffix), cached.with_suffix(suffix))
    try:
        cases = [parse_case("torch", base=base), parse_case("openvino:int8", base=base)]
        report = run_bench(cases, images=_scenes(3, seed=11), repeat=1, cold=False, flops=False, peaks=False)
    finally:
        shutil.rmtree(cached.parent)
    row = report.rows[1]
    assert row.error is None and row.case == "openvino:int8" and row.precision == "int8"
    assert row.instances > 0 and row.median_s > 0
    assert 0.5 <= row.matched <= 1.0  # agreement with the fp32 reference is reported (not exact: int8)


def test_calibration_images_from_a_folder_or_a_dataset(tmp_path):
    from PIL import Image

    folder = tmp_path / "photos" / "day1"
    folder.mkdir(parents=True)
    for i in range(10):
        Image.fromarray(np.full((20, 30, 3), 10 * i, np.uint8)).save(folder / f"{i:02d}.png")
    (folder / "notes.txt").write_text("not an image")
    images = calibration_images(tmp_path / "photos", limit=4)  # recursive; 4 spread over the 10
    assert [p.name for p in images.paths] == ["00.png", "03.png", "06.png", "09.png"]
    assert images[1].shape == (20, 30, 3) and images[1].dtype == np.uint8 and images[1][0, 0, 0] == 30
    data = write_shapes(tmp_path / "set", n=3, seed=0)  # a COCO dataset: its images, found through the JSON
    assert len(calibration_images(data.parent)) == 3 and calibration_images(data).source == str(data)
    with pytest.raises(UsageError, match="no such file or folder"):
        calibration_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="found no images"):
        calibration_images(tmp_path / "empty")
