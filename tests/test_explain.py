"""``Segmenter.explain`` / ``masklab explain``: the recorded trace, its pictures and its page.

The demo model (shapes_small, trained on squares/circles/triangles) gives real detections on a generated
scene; the default architecture and the matterport port run with seeded random weights.
"""

from __future__ import annotations

import base64
import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from masklab.cli import main

DEMO_MODEL = Path(__file__).parents[1] / "masklab" / "assets" / "shapes_small.safetensors"
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def shapes_image(seed: int = 1) -> np.ndarray:
    """A generated 160x144 shapes scene (non-square, so the input is resized and padded)."""
    from masklab.data.shapes import random_scene

    return random_scene(np.random.default_rng(seed), size=160).image[:144].copy()


@pytest.fixture(scope="module")
def demo():
    from masklab import Segmenter

    return Segmenter(DEMO_MODEL, device="cpu", backend="torch")  # the trace is eager: compare eager


@pytest.fixture(scope="module")
def demo_trace(demo):
    return demo.explain(shapes_image())


def _same_instances(a, b) -> None:
    assert len(a) == len(b)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.masks, b.masks)
    np.testing.assert_array_equal(a.class_ids, b.class_ids)
    assert a.labels == b.labels


def test_trace_final_instances_equal_segmenter(demo, demo_trace):
    inst = demo(shapes_image())
    assert len(inst) >= 2  # the demo model finds the shapes: the comparison is not between two empty sets
    _same_instances(demo_trace.instances, inst)
    # the box head's detections are those instances before pasting, in network-input pixels
    scale = demo_trace.input.scale
    np.testing.assert_allclose(demo_trace.box_head.boxes / scale, inst.boxes, rtol=0, atol=0.02 * 160)
    assert "eager torch runtime the segmenter uses" in demo_trace.note


def _check_counts(trace, *, post_nms_top_n: int, max_detections: int) -> None:
    r, b = trace.rpn, trace.box_head
    c = trace.counts()
    assert c["anchors"] == sum(a.count for a in trace.anchors) == len(r.anchors) == len(r.refined) == len(r.scores)
    assert c["after_nms"] <= c["before_nms"] <= c["anchors"]
    assert r.post_nms_top_n == post_nms_top_n and c["after_nms"] <= post_nms_top_n
    assert len(r.objectness) == len(trace.anchors)
    for o, a in zip(r.objectness, trace.anchors):
        assert o.shape == (len(a.cell_anchors), *a.grid_hw) and 0 <= o.min() and o.max() <= 1
    assert trace.roi.pooled.shape[0] == len(r.proposals) == b.class_probs.shape[0] == b.refined.shape[0]
    np.testing.assert_allclose(b.class_probs.sum(1), 1.0, atol=1e-5)
    assert b.counts["kept"] <= b.counts["after_nms"] <= b.counts["above_threshold"] <= b.counts["candidates"]
    assert b.max_detections == max_detections and b.counts["kept"] <= max_detections
    assert b.counts["kept"] == len(b.boxes) == len(trace.mask.probs) == len(trace.mask.pasted)
    assert len(trace.instances) <= b.counts["kept"]
    assert trace.mask.probs.shape[1:] == (28, 28) and trace.mask.pasted.shape[1:] == trace.input.original.shape[:2]


def test_stage_counts_are_consistent(demo, demo_trace):
    _check_counts(demo_trace, post_nms_top_n=demo.inference.proposals, max_detections=demo.inference.max_detections)
    assert demo_trace.box_head.counts["kept"] >= 2
    # the input stage: 160x144 at min/max size 128 -> scale 0.8, 128x115 inside a 128x128 padded tensor
    s = demo_trace.input
    assert s.scale == pytest.approx(0.8) and s.window_yxyx == (0, 0, 115, 128) and s.padded_hw == (128, 128)
    assert [f.stride for f in demo_trace.features] == [8, 16, 32, 64]


def test_roialign_crop_equals_torchvision_roi_align(demo_trace):
    import torch
    from torchvision.ops import roi_align, roi_pool

    from masklab.explain import best_proposals, roi_pool_crop

    t, roi = demo_trace, demo_trace.roi
    picks = best_proposals(t, 5)
    assert len(picks) == 5
    for i in picks.tolist():
        level = int(roi.levels[i])
        feat = torch.from_numpy(t.features[level].features)[None]
        box = torch.from_numpy(t.rpn.proposals[i : i + 1])
        ours = roi_align(feat, [box], output_size=roi.output_size, spatial_scale=1.0 / t.features[level].stride,
                         sampling_ratio=roi.sampling_ratio, aligned=roi.aligned)[0].numpy()
        np.testing.assert_allclose(roi.pooled[i], ours, rtol=0, atol=1e-6)
        old = roi_pool(feat, [box], output_size=roi.output_size, spatial_scale=roi.spatial_scales[level])[0].numpy()
        np.testing.assert_array_equal(roi_pool_crop(t, i), old)
    # the point of the picture: rounding to cells changes the crop
    assert any(not np.allclose(roi_pool_crop(t, i), roi.pooled[i], atol=1e-3) for i in picks.tolist())


def _png(data: bytes):
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    im.load()
    return np.asarray(im.convert("RGB"))


@pytest.mark.slow
def test_pictures_written_and_checked(demo_trace, tmp_path):
    from masklab.explain import write_explanation

    result = write_explanation(demo_trace, tmp_path / "explain")
    assert [p.name for p in result.pictures] == ["1_input", "2_features", "3_anchors", "4_rpn", "5_roi_align",
                                                  "6_box_head", "7_masks", "8_overlay"]
    arrays = []
    for pic, path in zip(result.pictures, result.paths):
        data = path.read_bytes()
        assert data == pic.png and data[:8] == b"\x89PNG\r\n\x1a\n"
        a = _png(data)
        arrays.append(a)
        assert a.shape[0] >= 300 and a.shape[1] >= 600, (pic.name, a.shape)
        assert len(np.unique(a.reshape(-1, 3), axis=0)) > 200, pic.name  # drawn images, not a blank canvas
        assert (a < 100).all(-1).mean() > 0.002, pic.name  # dark text: the title and caption are there
        assert len(pic.caption) > 200 and pic.counts
    assert len({a.tobytes() for a in arrays}) == len(arrays)
    # the final picture shows the segmenter's masks: its instance colours are in the PNG
    overlay = arrays[-1]
    from masklab.visualize import render

    drawn = render(demo_trace.input.original, demo_trace.instances, ["instance"])
    changed = drawn[(drawn != demo_trace.input.original).any(-1)]
    colours = {tuple(c) for c in changed[:: max(1, len(changed) // 50)]}
    present = {tuple(c) for c in overlay.reshape(-1, 3)[:: 7]}
    assert len(colours & present) >= len(colours) // 4
    # the counts printed in the captions are the trace's
    c = demo_trace.counts()
    rpn = next(p for p in result.pictures if p.name == "4_rpn")
    assert f"{c['after_nms']} proposals" in rpn.caption and f"all {c['anchors']} anchors" in rpn.caption
    page = result.html.read_text()
    uris = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert [base64.b64decode(u) for u in uris] == [p.png for p in result.pictures]
    assert "http://" not in page and "https://" not in page and "<script" not in page
    import html

    for p in result.pictures:
        assert html.escape(p.caption) in page


@pytest.mark.slow
def test_cli_explain_writes_folder_and_rejects_bad_input(tmp_path, capsys):
    from PIL import Image

    Image.fromarray(shapes_image(2)).save(tmp_path / "scene.png")
    out = tmp_path / "out"
    rc = main(["explain", str(tmp_path / "scene.png"), "--out", str(out), "--model", str(DEMO_MODEL), "--device", "cpu"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{n}.png" for n in ("1_input", "2_features", "3_anchors", "4_rpn", "5_roi_align", "6_box_head", "7_masks",
                              "8_overlay")] + ["index.html", "counts.json"])
    assert "index.html" in capsys.readouterr().out
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert main(["explain", str(tmp_path / "bad.png"), "--out", str(tmp_path / "o2"), "--model", str(DEMO_MODEL)]) != 0
    assert not (tmp_path / "o2" / "index.html").exists()


def test_unhookable_runtime_traces_the_eager_module(small_weights):
    from masklab import Segmenter

    fast = Segmenter(small_weights, device="cpu", backend="torch-fast", score_thresh=0.0, min_size=128, max_size=160)
    eager = Segmenter(small_weights, device="cpu", backend="torch", score_thresh=0.0, min_size=128, max_size=160)
    img = shapes_image(3)
    trace = fast.explain(img)
    assert "cannot be hooked" in trace.note and "torch-fast" in trace.note
    assert len(trace.instances) > 0
    _same_instances(trace.instances, eager(img))


@pytest.mark.slow
def test_default_architecture_random_weights(v2_segmenter, tmp_path):
    """maskrcnn_resnet50_fpn_v2 (the default model) with seeded random weights, score threshold 0."""
    from masklab.explain import write_explanation

    img = shapes_image(4)
    trace = v2_segmenter.explain(img)
    inst = v2_segmenter(img)
    assert len(inst) > 0
    _same_instances(trace.instances, inst)
    _check_counts(trace, post_nms_top_n=v2_segmenter.inference.proposals,
                  max_detections=v2_segmenter.inference.max_detections)
    assert [f.name for f in trace.backbone] == ["C2", "C3", "C4", "C5"]
    assert [f.name for f in trace.features] == ["P2", "P3", "P4", "P5", "P6"]
    assert len(set(trace.roi.levels.tolist())) >= 1 and trace.roi.method == "roi_align"
    result = write_explanation(trace, tmp_path / "v2")
    assert all(_png(p.png).shape[1] >= 600 for p in result.pictures)


@pytest.mark.slow
def test_matterport_port_maps_onto_the_trace(tmp_path):
    from masklab import Segmenter
    from masklab.explain import write_explanation

    seg = Segmenter("matterport_r101_coco", weights="random", device="cpu", score_thresh=0.0,
                    min_size=192, max_size=256, max_detections=20)
    img = shapes_image(5)
    trace = seg.explain(img)
    inst = seg(img)
    assert len(inst) > 0
    _same_instances(trace.instances, inst)
    _check_counts(trace, post_nms_top_n=seg.inference.proposals, max_detections=20)
    assert trace.roi.method == "crop_and_resize" and [f.stride for f in trace.features] == [4, 8, 16, 32, 64]
    assert trace.input.padded_hw == (256, 256) and trace.input.window_yxyx[0] > 0  # letterboxed: padding on top
    result = write_explanation(trace, tmp_path / "mp")
    assert len(result.paths) == 8


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install -y chromium)")
def test_page_loads_in_headless_chromium(demo_trace, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra has it)")
    from test_browser import FLAGS

    from masklab.explain import write_explanation

    result = write_explanation(demo_trace, tmp_path / "page")
    errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                    headless=True, args=FLAGS, offline=True)
        try:
            page = ctx.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("requestfailed", lambda r: errors.append(f"failed: {r.url}"))
            page.goto(result.html.as_uri())
            page.wait_for_load_state("load")
            sizes = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth, e.naturalHeight])")
            titles = page.eval_on_selector_all("section h2", "els => els.map(e => e.textContent)")
        finally:
            ctx.close()
    assert errors == []
    assert titles == [p.title for p in result.pictures]
    expected = [_png(p.png).shape[:2] for p in result.pictures]
    assert [(w, h) for _, w, h in sizes] == [(s[1], s[0]) for s in expected] and all(c for c, _, _ in sizes)


@pytest.mark.slow
def test_notebook_runs(tmp_path, monkeypatch):
    """examples/how_it_works.ipynb runs end to end (the demo model, a generated scene)."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")

    root = Path(__file__).parents[1]
    nb = nbformat.read(root / "examples" / "how_it_works.ipynb", as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    import os

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))  # this checkout
    monkeypatch.setenv("MPLBACKEND", "Agg")
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 6  # the stages are drawn inline
    text = "".join(o.get("text", "") for o in outputs)
    assert "instances equal seg(image): True" in text


def test_image_with_nothing_in_it(demo, tmp_path):
    """A flat grey image: no detections; the trace and every picture still come out, saying so."""
    from masklab.explain import write_explanation

    trace = demo.explain(np.full((100, 120, 3), 128, np.uint8))
    assert len(trace.instances) == 0 == len(demo(np.full((100, 120, 3), 128, np.uint8)))
    assert trace.box_head.counts["kept"] == 0 and trace.mask.probs.shape == (0, 28, 28)
    assert trace.rpn.counts()["after_nms"] > 0  # proposals are always made; the box head rejects them
    result = write_explanation(trace, tmp_path / "empty")
    masks = next(p for p in result.pictures if p.name == "7_masks")
    assert "0 detections" in masks.caption and _png(masks.png).shape[1] >= 600
