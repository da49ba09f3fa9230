"""matterport's networks in OpenVINO (``backend="openvino"``) against the eager port.

One conversion per session, through the public path (``Segmenter(h5, backend="openvino")``), of the
reference's rule weights in a network built for 256x256 inputs (ResNet-101 at 1024 would cost minutes;
the 1024 reference input is measured by ``benchmarks/matterport_speed.py``). Slow: the 257 MB ``.h5``
and one OpenVINO conversion (~1 min).

What is exact and what is not: each network agrees with torch to float rounding (checked on identical
inputs), and the glue (proposals, ROI align, detection layer, unmolding) is the eager port's own code
(checked by feeding both runtimes the same heads). End to end the two can still part on a box whose
proposal touches the molded image's far edge (``x2`` or ``y2`` = 1 after the clip): TF's
``crop_and_resize`` zeroes a sample that lands a rounding error beyond the last pixel, so the last
column of its 7x7 crop is all zeros or not depending on the last bit of ``x1`` (TF has the same
coin-flip). The benchmark reports that end-to-end agreement.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("openvino")

from masklab.models.matterport.preprocess import mold_image  # noqa: E402
from masklab.models.matterport.runtime import MatterportRun, MatterportRuntime  # noqa: E402

REF = Path(__file__).parent / "data" / "mrcnn_ref"
pytestmark = pytest.mark.slow


def _second_image(h: int = 150, w: int = 230, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 255 // w), (yy * 255 // h), ((xx + yy) * 127 // (h + w))], -1).astype(np.float64)
    for _ in range(6):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(8, 40)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, 256, 3)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def ov_segmenter(tmp_path_factory):
    from masklab import Segmenter

    spec = importlib.util.spec_from_file_location("weights_rule", REF / "weights_rule.py")
    rule = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rule)
    h5 = tmp_path_factory.mktemp("mrcnn_ov") / "rule.h5"
    rule.write_h5(rule.load_layout(REF / "layout.json"), h5)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MASKLAB_HOME", str(tmp_path_factory.getbasetemp() / "masklab-home"))
        mp.setenv("MASKLAB_OFFLINE", "1")
        seg = Segmenter(h5, device="cpu", backend="openvino", min_size=200, max_size=256, score_thresh=0.3, threads=2)
    return seg, h5


def _x(runtime, image):
    molded = mold_image(image, runtime.config)
    return molded, torch.from_numpy(molded.network_input(runtime.config)).permute(2, 0, 1)[None]


def test_openvino_backend_is_chosen_converted_once_and_cached(ov_segmenter, monkeypatch, tmp_path_factory):
    from masklab import Segmenter
    from masklab.runtime import matterport_ov

    seg, h5 = ov_segmenter
    rt = seg.runtime
    assert isinstance(rt, matterport_ov.MatterportOpenVINORuntime) and rt.name == "openvino" and rt.precision == "fp32"
    assert rt.config.DETECTION_MIN_CONFIDENCE == pytest.approx(0.3) and rt.config.IMAGE_MAX_DIM == 256
    assert rt.features.compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == "f32"

    def no_conversion(*a, **k):
        raise AssertionError("converted again")

    monkeypatch.setattr(matterport_ov, "export_matterport_openvino", no_conversion)
    monkeypatch.setenv("MASKLAB_HOME", str(tmp_path_factory.getbasetemp() / "masklab-home"))
    # another threshold is glue, not network: the same export serves it
    again = Segmenter(h5, device="cpu", backend="openvino", min_size=200, max_size=256, score_thresh=0.5)
    assert again.runtime.config.DETECTION_MIN_CONFIDENCE == pytest.approx(0.5)
    inst = again(_second_image())
    assert len(inst) > 0 and (inst.scores >= 0.5).all() and inst.masks.shape[1:] == (150, 230)

    # auto with the export cached: OpenVINO, and the weights hashed once (ResNet-101's are ~250 MB)
    keys = []

    def counted_key(module):
        keys.append(1)
        return real_key(module)

    real_key = matterport_ov.matterport_export_key
    monkeypatch.setattr(matterport_ov, "matterport_export_key", counted_key)
    auto = Segmenter(h5, device="cpu", backend="auto", min_size=200, max_size=256, score_thresh=0.3)
    assert isinstance(auto.runtime, matterport_ov.MatterportOpenVINORuntime) and len(keys) == 1, len(keys)


def test_each_network_matches_torch_on_the_same_input(ov_segmenter):
    seg, _ = ov_segmenter
    rt, module = seg.runtime, seg.loaded.module
    _, x = _x(rt, _second_image())
    with torch.inference_mode():
        _, p_t, probs_t, deltas_t = module.features(x)
        *p_o, probs_o, deltas_o = rt.features(x)
        for a, b in zip(p_t, p_o):
            assert a.shape == b.shape and (a - b).abs().max() <= 1e-4 * a.std()
        assert (probs_t - probs_o).abs().max() <= 1e-5 and (deltas_t - deltas_o).abs().max() <= 1e-4
        pooled = torch.randn(37, 256, 7, 7, generator=torch.Generator().manual_seed(0)) * 5
        (cp_t, cd_t), (cp_o, cd_o) = module.classifier(pooled), rt.classifier(pooled)
        assert (cp_t - cp_o).abs().max() <= 1e-5 and (cd_t - cd_o).abs().max() <= 1e-4
        pooled = torch.randn(3, 256, 14, 14, generator=torch.Generator().manual_seed(1)) * 5
        m_t, m_o = module.mask_head(pooled), rt.mask_head(pooled)
        assert m_t.shape == m_o.shape == (3, 81, 28, 28) and (m_t - m_o).abs().max() <= 1e-5


@pytest.mark.parametrize("threshold", [0.0, 0.3])
def test_same_heads_give_the_same_detections(ov_segmenter, threshold):
    """The glue is shared: from one forward pass's heads, both runtimes' detection layer, mask head and
    unmolding give the same instances (mask head differences stay below the 0.5 threshold's reach)."""
    seg, _ = ov_segmenter
    rt = seg.runtime
    eager = MatterportRuntime(seg.loaded.module)
    image = _second_image()
    molded, x = _x(rt, image)
    with torch.inference_mode():
        heads = eager.forward_heads(x)
    cfg = dataclasses.replace(rt.config, DETECTION_MIN_CONFIDENCE=threshold)
    a = eager.redetect(MatterportRun(molded, heads, None, None, None), config=cfg)
    b = rt.redetect(MatterportRun(molded, heads, None, None, None), config=cfg)
    ra, rb = a.result, b.result
    assert len(ra.rois) > 0 and np.array_equal(ra.rois, rb.rois) and np.array_equal(ra.class_ids, rb.class_ids)
    assert np.abs(ra.scores - rb.scores).max() == 0  # same numbers in, same code
    assert np.abs(a.masks28 - b.masks28).max() <= 1e-4  # the reference README's tolerance for probabilities
    inter = (ra.masks & rb.masks).sum((1, 2))
    union = (ra.masks | rb.masks).sum((1, 2))
    assert (inter / np.maximum(union, 1)).min() >= 0.99


def test_bf16_runs_with_its_hint_and_gives_valid_instances(ov_segmenter):
    from masklab.runtime.matterport_ov import MatterportOpenVINORuntime, prepared_export

    seg, _ = ov_segmenter
    rt = MatterportOpenVINORuntime(prepared_export(seg.loaded.module), precision="bf16", threads=2, config=seg.runtime.config)
    assert rt.features.compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == "bf16"
    dets = rt.predict([_second_image()])[0]
    assert len(dets.scores) > 0 and dets.masks.shape[1:] == (150, 230) and ((dets.class_ids > 0) & (dets.class_ids < 81)).all()
    assert (dets.scores >= np.float32(0.3)).all()
