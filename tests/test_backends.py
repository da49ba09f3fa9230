"""Every installed backend agrees with the eager fp32 reference (TorchRuntime) on a model with
well-separated outputs; backend selection and its errors.

Reduced precision (bf16) is checked to run and return valid Instances only: on random weights the scores
of neighbouring detections differ by less than bf16's resolution (~0.002 near 0.3), so bf16 legitimately
reorders and swaps them; its accuracy cost is judged on a trained model's val mask AP (benchmarks/).
"""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
from conftest import make_scene
from speed_models import r18_exports, r18_loaded

from masklab.errors import MissingDependencyError, UsageError
from masklab.models.zoo import get_spec
from masklab.runtime import converted_path, make_runtime
from masklab.runtime.torch import TorchRuntime
from masklab.runtime.torch_fast import TorchFastRuntime, _cpu_has_bf16
from masklab.settings import InferenceSettings


@pytest.fixture(scope="module")
def image():
    return make_scene(170, 230, seed=11)


def _runtime(loaded, **settings):
    """The runtime make_runtime picks for ``loaded`` under these settings, on the CPU."""
    return make_runtime(loaded, InferenceSettings(model=loaded.spec.name, **settings), device="cpu")


@pytest.fixture(scope="module")
def reference(image):
    return TorchRuntime(r18_loaded().module).predict([image])[0]


def _assert_same(got, ref):
    assert len(ref.scores) == 8  # max_detections of the test model: never a vacuous comparison
    np.testing.assert_array_equal(got.class_ids, ref.class_ids)
    # fp32 with another memory layout / kernels: sums in another order, boxes move by ~1e-4 px
    np.testing.assert_allclose(got.boxes, ref.boxes, atol=1e-2)
    np.testing.assert_allclose(got.scores, ref.scores, atol=1e-4)
    assert (got.masks != ref.masks).mean() < 1e-4


def test_torch_fast_fp32_matches_eager(image, reference):
    backend = TorchFastRuntime(r18_loaded().module, precision="fp32")
    assert backend.name == "torch-fast" and backend.precision == "fp32"
    _assert_same(backend.predict([image])[0], reference)


def test_torch_fast_does_not_change_the_shared_module(image, reference):
    import torch

    loaded = r18_loaded()
    TorchFastRuntime(loaded.module)  # channels-last on a copy
    w = loaded.module.backbone.body.conv1.weight
    assert w.is_contiguous() and not w.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.slow  # the first caller pays for the shared trace + exports (~10-20 s idle)
@pytest.mark.parametrize("fmt", ["onnx", "openvino", "torchscript"])
def test_runtime_backend_from_the_model_matches_eager(fmt, image, reference, tmp_path, monkeypatch):
    """backend='openvino'/'onnx'/'torchscript' on a torch model: converted once into the cache, then run."""
    exports = r18_exports(0.0)
    if fmt not in exports:
        pytest.skip(f"{fmt} runtime not installed")
    loaded = r18_loaded()
    cached = converted_path(loaded, fmt)
    # Seed the cache with the session's export of the same weights (converting again costs ~10 s);
    # export_loaded itself is tested in test_export.py.
    cached.parent.mkdir(parents=True, exist_ok=True)
    for f in exports[fmt].parent.glob(exports[fmt].stem + ".*"):
        shutil.copy(f, cached.with_suffix(f.suffix) if f.suffix in (".xml", ".bin", ".onnx", ".pt") else cached.parent / f.name)
    backend = _runtime(loaded, backend=fmt, score_thresh=0.0)
    _assert_same(backend.predict([image])[0], reference)


def test_conversion_cache_key_follows_weights_and_options():
    a, b = r18_loaded(), r18_loaded()
    assert converted_path(a, "openvino") == converted_path(b, "openvino")
    assert converted_path(a, "openvino") != converted_path(r18_loaded(seed=8), "openvino")
    assert converted_path(a, "openvino") != converted_path(r18_loaded(max_detections=9), "openvino")
    assert converted_path(a, "onnx") != converted_path(a, "openvino")


def _valid(inst_like, size_hw):
    n = len(inst_like.scores)
    assert inst_like.boxes.shape == (n, 4) and inst_like.masks.shape == (n, *size_hw)
    assert inst_like.masks.dtype == bool and np.isfinite(inst_like.boxes).all()
    assert ((inst_like.scores >= 0) & (inst_like.scores <= 1)).all()
    assert np.all(np.diff(inst_like.scores) <= 1e-6)  # descending


@pytest.mark.skipif(not _cpu_has_bf16(), reason="this CPU has no native bf16")
def test_torch_bf16_runs_and_returns_valid_instances(image, reference):
    got = TorchFastRuntime(r18_loaded().module, precision="bf16").predict([image])[0]
    assert got.scores.dtype == np.float32 and len(got.scores) == len(reference.scores)
    _valid(got, image.shape[:2])
    assert np.abs(got.scores - reference.scores).max() < 0.05  # same scale: bf16 keeps ~3 significant digits


@pytest.mark.parametrize(
    ("backend", "precision", "match"),
    [
        ("tensorrt", "fp32", "backend must be one of"),
        ("torch", "fp64", "precision must be one of"),
        ("torch", "int8", "precision int8 runs on the CPU with backend openvino or auto, found backend 'torch'"),
        ("torch-fast", "fp16", "needs a CUDA GPU"),
        ("onnx", "bf16", "fp32 only"),
    ],
)
def test_bad_choices_are_clear_errors(backend, precision, match):
    with pytest.raises(UsageError, match=match):
        _runtime(r18_loaded(), backend=backend, precision=precision)


def test_auto_picks_the_exact_eager_path_on_the_cpu():
    loaded = r18_loaded()
    resnet50 = dataclasses.replace(loaded, spec=dataclasses.replace(loaded.spec, arch=get_spec("maskrcnn_resnet50_fpn_v2").arch))
    for lm in (loaded, resnet50):
        assert _runtime(lm, backend="auto").name == "torch"  # eager, no conversion
    if _cpu_has_bf16():  # reduced precision only when asked for, then through autocast
        fast = _runtime(loaded, backend="auto", precision="bf16")
        assert fast.name == "torch-fast" and fast.precision == "bf16"


def test_missing_openvino_is_a_clear_error(monkeypatch):
    import importlib

    real = importlib.import_module

    def fake(name, *a, **k):
        if name.startswith("openvino"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(MissingDependencyError, match=r"masklab\[openvino\]"):
        _runtime(r18_loaded(), backend="openvino")


def test_segmenter_backend_and_precision(small_weights):
    from masklab import Segmenter

    seg = Segmenter(small_weights, device="cpu", min_size=96, max_size=128, backend="torch")
    assert seg.backend.name == "torch" and seg.settings()["precision"] == "fp32"
    with pytest.raises(UsageError, match="backend must be one of"):
        Segmenter(small_weights, device="cpu", backend="nope")
