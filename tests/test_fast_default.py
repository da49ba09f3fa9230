"""Step 11: the fastest exact path is what users get (backend "auto"), found without torch; precision
follows what the CPU does natively; the numpy mask paste equals torchvision's.

The prepared-model tests use the shipped shapes model (trained: well-separated scores, so the exact rule
below is meaningful) in a cache folder of their own, so no other test finds its prepared model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import masklab
from masklab.bench.agreement import agreement
from masklab.data.shapes import random_scene
from masklab.errors import UsageError
from masklab.hardware import available_cpus, cpu_features
from masklab.runtime import PrecisionWarning, resolve_precision, worth_preparing
from masklab.runtime.prepared import find_prepared, prepared_model
from masklab.settings import InferenceSettings

SHAPES = Path(masklab.__file__).parent / "assets" / "shapes_small.safetensors"
pytestmark = pytest.mark.skipif(
    __import__("importlib").util.find_spec("openvino") is None, reason="OpenVINO is not installed"
)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """One MASKLAB_HOME for this module: the shapes model is prepared once (~10 s idle), here only."""
    return tmp_path_factory.mktemp("fast-home")


@pytest.fixture
def in_home(home, monkeypatch):
    monkeypatch.setenv("MASKLAB_HOME", str(home))
    return home


@pytest.fixture
def every_cpu(monkeypatch):
    """The machine's whole thread budget, whatever an earlier test configured (test_batch runs with one
    torch thread): a throughput compile's streams follow the budget."""
    import torch

    from masklab import hardware

    monkeypatch.setattr(hardware, "_BUDGET", [])
    before = torch.get_num_threads()
    torch.set_num_threads(available_cpus())
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(5)
    return [random_scene(rng, size=128, max_shapes=4).image for _ in range(8)]


@pytest.fixture(scope="module")
def eager(images):
    seg = masklab.Segmenter(SHAPES, backend="torch", device="cpu")
    assert seg.runtime.name == "torch"
    out = seg.predict(images)
    assert sum(len(i) for i in out) >= 8  # the model finds the shapes: never a vacuous comparison
    return out


def _exact(reference, outputs) -> None:
    """The "exact" rule of step 11: >= 99% of the eager instances matched at mask IoU >= 0.9 with the
    same class, boxes within 0.01 px, scores within 1e-4."""
    a = agreement(reference, outputs)
    assert a["matched"] >= 0.99, a
    assert a["max_box_delta"] <= 0.01, a
    assert a["max_score_delta"] <= 1e-4, a


@pytest.mark.slow  # one conversion of the shapes model to OpenVINO
def test_auto_with_a_prepared_model_is_openvino_and_exact(in_home, images, eager, capsys):
    assert find_prepared(InferenceSettings(model=str(SHAPES))) is None
    seg = masklab.Segmenter(SHAPES, device="cpu")
    assert seg.runtime.name == "torch" and seg.eager_by_default
    path = seg.prepare()
    assert path is not None and path.is_file() and path.with_suffix(".bin").is_file()
    assert seg.runtime.name == "openvino" and seg.runtime.precision == "fp32"
    _exact(eager, seg.predict(images))
    # a new segmenter (a new run) finds it by the weights' bytes and the options, and runs it
    again = masklab.Segmenter(SHAPES, device="cpu")
    assert again.runtime.name == "openvino" and again.loaded.prepared == path and again.loaded.module is None
    assert not again.eager_by_default
    _exact(eager, again.predict(images))
    # the IR keeps fp32 weights (compress_to_fp16=False): no f16 constants in it
    assert 'element_type="f16"' not in path.read_text()
    # other baked options are another prepared model; explicit torch stays the reference
    assert find_prepared(InferenceSettings(model=str(SHAPES), score_thresh=0.3)) is None
    assert masklab.Segmenter(SHAPES, backend="torch", device="cpu").runtime.name == "torch"


@pytest.mark.slow
def test_tiled_auto_runs_the_prepared_model_concurrently_and_agrees_with_eager_tiles(in_home):
    from masklab.data.shapes import large_scene

    masklab.Segmenter(SHAPES, device="cpu", backend="torch").prepare()  # converted once per module
    scene = large_scene(np.random.default_rng(3), height=300, width=420, n_shapes=10)
    fast = masklab.Segmenter(SHAPES, device="cpu", tile=128)
    assert fast.runtime.name == "openvino" and fast.concurrency >= 2  # tiles from several requests at once
    reference = masklab.Segmenter(SHAPES, device="cpu", backend="torch", tile=128)(scene.image)
    assert len(reference) >= 6  # the model finds the shapes on tiles: never a vacuous comparison
    _exact([reference], [fast(scene.image)])


def test_without_a_prepared_model_a_short_run_is_eager_and_says_how(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MASKLAB_HOME", str(tmp_path))
    seg = masklab.Segmenter(SHAPES, device="cpu", score_thresh=0.4)
    assert seg.runtime.name == "torch" and seg.eager_by_default
    seg.plan(images=3)  # a short run: not worth a conversion
    seg.predict([random_scene(np.random.default_rng(0), size=128).image])
    assert seg.runtime.name == "torch" and not any((tmp_path / "prepared").glob("*/*.xml"))
    err = capsys.readouterr().err  # said at the first eager image (not at construction: prepare() may follow)
    assert f"masklab models --prepare {SHAPES} --score-thresh 0.4" in err and "eager torch" in err


def test_worth_preparing_follows_the_run_length():
    assert not worth_preparing(images=3, seconds_per_image=6.0)
    assert worth_preparing(images=500, seconds_per_image=6.0)
    assert not worth_preparing(images=50, seconds_per_image=0.02)  # a tiny model: the conversion dominates


@pytest.mark.slow
def test_a_long_run_prepares_first_and_switches(home, images, tmp_path, monkeypatch, capsys):
    import masklab.inference.segmenter as segmenter_module

    monkeypatch.setenv("MASKLAB_HOME", str(home))
    ready = masklab.Segmenter(SHAPES, device="cpu", backend="torch").prepare()  # converted once per module
    monkeypatch.setenv("MASKLAB_HOME", str(tmp_path))  # a cache without it: this run starts eager
    calls = []

    def convert(loaded, fmt):  # stands in for the ~10 s conversion, which the test above exercises
        calls.append(fmt)
        return ready

    monkeypatch.setattr(segmenter_module, "prepare", convert)
    seg = masklab.Segmenter(SHAPES, device="cpu")
    assert seg.runtime.name == "torch"
    seg.plan(images=10**6)
    seg.predict(images[:1])  # the warm-up call is not timed for the decision
    assert calls == [] and seg.runtime.name == "torch"
    second = seg.predict(images[1:2])
    assert calls == ["openvino"] and seg.runtime.name == "openvino"
    assert "preparing the fast path first" in capsys.readouterr().err
    _exact(seg.__class__(SHAPES, device="cpu", backend="torch").predict(images[1:2]), second)
    seg.predict(images[2:3])
    assert calls == ["openvino"]  # decided once


def test_prepared_key_follows_weights_bytes_and_options(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKLAB_HOME", str(tmp_path))
    (tmp_path / "copy").mkdir()
    w = tmp_path / "copy" / SHAPES.name  # the card names its weights file: keep the name
    w.write_bytes(SHAPES.read_bytes())
    w.with_suffix(".json").write_text(SHAPES.with_suffix(".json").read_text())
    base = prepared_model(InferenceSettings(model=str(w)))
    assert base is not None
    assert prepared_model(InferenceSettings(model=str(SHAPES))).key == base.key  # same bytes, same key
    assert prepared_model(InferenceSettings(model=str(w), max_detections=7)).key != base.key
    # the model's default given explicitly is the same model
    card_min = json.loads(w.with_suffix(".json").read_text())["min_size"]
    assert prepared_model(InferenceSettings(model=str(w), min_size=card_min)).key == base.key
    assert prepared_model(InferenceSettings(model=str(w), min_size=card_min - 32)).key != base.key
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF  # one byte flipped in place: another model
    st = w.stat()
    w.write_bytes(bytes(data))
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the old mtime put back
    assert prepared_model(InferenceSettings(model=str(w))).key != base.key
    assert prepared_model(InferenceSettings(model="maskrcnn_resnet50_fpn_v2")) is None  # weights not downloaded


@pytest.mark.slow
def test_the_prepared_path_imports_no_torch(in_home, images, tmp_path):
    seg = masklab.Segmenter(SHAPES, device="cpu", backend="torch")
    seg.prepare()  # found in the cache when the test above ran
    from PIL import Image

    Image.fromarray(images[0]).save(tmp_path / "one.png")
    env = {**os.environ, "MASKLAB_HOME": str(in_home)}
    code = (
        "import sys, numpy as np\n"
        "from PIL import Image\n"
        "from masklab import Segmenter\n"
        f"seg = Segmenter({str(SHAPES)!r}, device='auto')\n"
        f"inst = seg(np.array(Image.open({str(tmp_path / 'one.png')!r})))\n"
        "assert seg.runtime.name == 'openvino', seg.runtime.name\n"
        "assert len(inst) > 0\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision'))\n"
        "assert not bad, bad[:5]\n"
        # nor OpenVINO's converter, whose import starts its telemetry (a client id, an event, a thread)
        "assert 'openvino.tools.ovc' not in sys.modules and 'openvino_telemetry' not in sys.modules\n"
        "import threading\n"
        "left = [t.name for t in threading.enumerate() if not t.daemon and t is not threading.main_thread()]\n"
        "assert not left, left\n"
        "print('ok', len(inst))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stderr[-2000:]
    # the CLI too: decoding, segmenting, writing JSON/overlay/run.json, with torch blocked outright
    blocker = tmp_path / "block_torch.py"
    blocker.write_text(
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'torchvision'):\n"
        "            raise ImportError(f'{name} imported on the torch-free path')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from masklab.cli import entry\n"
        "entry()\n"
    )
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, str(blocker), "segment", str(tmp_path / "one.png"), "--model", str(SHAPES),
                        "--out", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    run = json.loads((out / "run.json").read_text())
    # one image: one latency stream (a folder of 4+ is compiled for throughput)
    assert run["runtime"] == {"name": "openvino", "precision": "fp32", "streams": 1} and run["succeeded"] == 1
    assert "openvino fp32" in r.stderr


def test_bf16_on_a_cpu_without_it_warns_once_and_runs_fp32(monkeypatch):
    import masklab.runtime as rt

    monkeypatch.setenv("MASKLAB_CPU_FLAGS", "avx2 fma avx512f avx512_vnni")  # an Ice Lake: VNNI, no bf16
    cpu_features.cache_clear()
    monkeypatch.setattr(rt, "_WARNED", set())
    try:
        assert not cpu_features().bf16 and cpu_features().int8
        with pytest.warns(PrecisionWarning, match="emulated on this CPU"):
            assert resolve_precision("bf16", device="cpu") == "fp32"
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once: the second ask is silent
            assert resolve_precision("bf16", device="cpu") == "fp32"
        with pytest.raises(UsageError, match="drop --strict-precision"):
            resolve_precision("bf16", device="cpu", strict=True)
        assert resolve_precision("bf16", device="cuda") == "bf16"  # GPUs: the user's choice stands
        with pytest.warns(PrecisionWarning):
            seg = masklab.Segmenter(SHAPES, device="cpu", precision="fp16")
        assert seg.inference.precision == "fp32" and seg.runtime.precision == "fp32"
    finally:
        monkeypatch.delenv("MASKLAB_CPU_FLAGS")
        cpu_features.cache_clear()


def test_native_bf16_is_kept(monkeypatch):
    monkeypatch.setenv("MASKLAB_CPU_FLAGS", "avx512f avx512_bf16 avx512_vnni")
    cpu_features.cache_clear()
    try:
        assert resolve_precision("bf16", device="cpu") == "bf16"
        assert "native: bf16, int8" in cpu_features().describe()
    finally:
        monkeypatch.delenv("MASKLAB_CPU_FLAGS")
        cpu_features.cache_clear()


def test_describe_names_the_cpu_and_its_flags():
    seg = masklab.Segmenter(SHAPES, device="cpu", backend="torch")
    text = seg.describe()
    assert cpu_features().model in text and "native" in text


# -- the numpy paste ---------------------------------------------------------------------------------


def _random_boxes(rng, n, h, w, *, tiny=False):
    xy = rng.uniform(-30, max(h, w) + 10, (n, 2))
    wh = rng.uniform(0, 1.5, (n, 2)) if tiny else rng.uniform(0, 70, (n, 2))
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


@pytest.mark.parametrize("case", ["uniform", "near_threshold", "tiny_boxes", "partly_outside", "large_boxes"])
def test_numpy_paste_equals_torchvision(case):
    import torch
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    from masklab.runtime.torch import paste_masks_torch
    from masklab.structures.masks import paste_masks

    rng = np.random.default_rng({"uniform": 0, "near_threshold": 1, "tiny_boxes": 2, "partly_outside": 3, "large_boxes": 4}[case])
    compared = 0
    for _ in range(40):
        n, h, w = int(rng.integers(1, 6)), int(rng.integers(1, 100)), int(rng.integers(1, 100))
        probs = rng.random((n, 1, 28, 28)).astype(np.float32)
        if case == "near_threshold":  # within 0.01 of 0.5: where an arithmetic difference would show
            probs = (0.49 + 0.02 * probs).astype(np.float32)
        boxes = _random_boxes(rng, n, h, w, tiny=case == "tiny_boxes")
        if case == "partly_outside":
            boxes[:, :2] = rng.uniform(-20, -1, (n, 2))  # every box crosses the top-left border
        if case == "large_boxes":  # boxes larger than the image, crossing every border: the cropped window
            boxes = np.concatenate([rng.uniform(-60, 40, (n, 2)), rng.uniform(40, 200, (n, 2))], 1).astype(np.float32)
        ours = paste_masks(probs, boxes, (h, w))
        assert ours.shape == (n, h, w) and ours.dtype == bool
        np.testing.assert_array_equal(paste_masks_torch(torch.from_numpy(probs), torch.from_numpy(boxes), (h, w)), ours)
        for i in range(n):
            try:  # torchvision itself fails on a box wholly outside the image (an empty slice)
                ref = paste_masks_in_image(torch.from_numpy(probs[i : i + 1]), torch.from_numpy(boxes[i : i + 1]), (h, w), padding=1)
            except RuntimeError:
                assert not ours[i].any()
                continue
            np.testing.assert_array_equal(ours[i], (ref[0, 0] > 0.5).numpy())
            compared += int(ours[i].any())
    assert compared >= 10  # masks with pixels were compared, not only empty ones


@pytest.mark.slow
def test_a_folder_run_keeps_several_openvino_requests_in_flight_in_order(in_home, images, tmp_path, every_cpu):
    from PIL import Image

    from masklab.io.inputs import expand_inputs
    from masklab.runs import run_segment

    seg = masklab.Segmenter(SHAPES, device="cpu", backend="torch")
    seg.prepare()
    seg = masklab.Segmenter(SHAPES, device="cpu")
    assert seg.runtime.name == "openvino" and seg.concurrency >= 2
    folder = tmp_path / "in"
    folder.mkdir()
    for k, im in enumerate(images):
        Image.fromarray(im).save(folder / f"img{k:02d}.png")
    seen = []  # the runtime in force while the run's images came back
    summary = run_segment(expand_inputs([str(folder)]), tmp_path / "out", seg, progress=False, keep_instances=True,
                          on_result=lambda r: seen.append((seg.runtime.throughput, seg.runtime.streams, seg.concurrency)))
    assert summary.exit_code == 0 and len(summary.results) == len(images)
    # a run of 8 images compiles for throughput: on 2+ CPUs several streams, each a request in flight
    assert all(t for t, _, _ in seen)
    if available_cpus() >= 2:
        assert all(streams >= 2 and conc == streams + 1 for _, streams, conc in seen), seen
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["runtime"]["streams"] == seen[-1][1]
    # a second run straight after (no single image between) keeps the throughput compile throughout
    again = []
    run_segment(expand_inputs([str(folder)]), tmp_path / "out2", seg, progress=False,
                on_result=lambda r: again.append((seg.runtime.throughput, seg.runtime.streams)))
    assert again == [seen[-1][:2]] * len(images), again
    one_by_one = [seg(im) for im in images]
    assert seg.runtime.throughput is False and seg.runtime.streams == 1  # single images: latency again
    for r, ref in zip(summary.results, one_by_one):  # input order, and the same instances as one at a time
        assert r.item.stem == f"img{summary.results.index(r):02d}"
        np.testing.assert_array_equal(r.instances.masks, ref.masks)
        np.testing.assert_array_equal(r.instances.class_ids, ref.class_ids)
    assert sum(len(r.instances) for r in summary.results) >= 8


def test_openvino_without_its_converter_still_converts(tmp_path):
    """require("openvino") leaves out OpenVINO's converter (and the telemetry its import starts); a later
    conversion in the same process gets it through the openvino.convert_model stand-in."""
    pytest.importorskip("openvino")
    code = (
        "import sys, threading\n"
        "from masklab.optional import require\n"
        "ov = require('openvino')\n"
        "assert 'openvino.tools.ovc' not in sys.modules and 'openvino_telemetry' not in sys.modules\n"
        "assert all(t.daemon for t in threading.enumerate() if t is not threading.main_thread())\n"
        "import torch\n"
        "torch.manual_seed(0)\n"
        "net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()).eval()\n"
        "model = ov.convert_model(net, example_input=torch.ones(2, 4))\n"
        "assert isinstance(model, ov.Model) and 'openvino.tools.ovc' in sys.modules\n"
        "out = ov.Core().compile_model(model, 'CPU', {'INFERENCE_PRECISION_HINT': 'f32'})(torch.ones(2, 4).numpy())[0]\n"
        "assert abs(out - net(torch.ones(2, 4)).detach().numpy()).max() < 1e-5\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                       env={**os.environ, "HOME": str(tmp_path)})
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_openvino_is_imported_in_one_place_only():
    """Every masklab import of OpenVINO goes through masklab.optional.require, the one that leaves the
    converter (and its telemetry) out: a plain ``import openvino`` anywhere on a run path (the prepared-key
    of matterport's conversion was one) would bring both back."""
    import re
    from pathlib import Path

    root = Path(masklab.__file__).parent
    plain = re.compile(r"^\s*(import openvino\b|from openvino\b)", re.M)
    found = [str(p.relative_to(root)) for p in root.rglob("*.py") if p.name != "optional.py" and plain.search(p.read_text())]
    assert not found, found


def test_the_command_exits_with_its_code_and_its_messages(tmp_path):
    """``python -m masklab`` ends without interpreter teardown (cli._exit_without_teardown): its exit code
    and everything it printed still arrive."""
    r = subprocess.run([sys.executable, "-m", "masklab", "segment", str(tmp_path / "missing.png"), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "masklab:" in r.stderr and "missing.png" in r.stderr, (r.returncode, r.stderr[-500:])
    r = subprocess.run([sys.executable, "-m", "masklab", "models"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "maskrcnn_resnet50_fpn_v2" in r.stdout, r.stderr[-500:]
