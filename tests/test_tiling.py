"""Tiled inference: settings and flags, the tile grid, merging across tile borders (pixel-exact with a
colour-blob runtime), cropped masks, ``--tile auto``, the demo model end to end, ``masklab eval --tile``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from tiling_helpers import BlobRuntime, blob_scene, disc_scene

from masklab.errors import UsageError
from masklab.inference.tiling import Parts, merge_parts, predict_tiled, resolve_tile, tile_windows
from masklab.settings import InferenceSettings
from masklab.structures.cropped import CroppedMasks
from masklab.structures.instances import Instances
from masklab.structures.masks import encode_rle, mask_centroids, mask_perimeters

DEMO = str(Path(__file__).resolve().parents[1] / "masklab" / "assets" / "shapes_small.safetensors")


# -- settings and flags ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value, expected, error",
    [
        (None, None, None),
        ("auto", "auto", None),
        ("AUTO", "auto", None),
        (512, (512, 512), None),
        ("512", (512, 512), None),
        ("640x480", (640, 480), None),
        ([320, 256], (320, 256), None),
        ("8", None, "at least 16"),
        ("12x", None, "SIZE, WxH"),
        ("big", None, "SIZE, WxH"),
        (True, None, "tile must be"),
        (128.5, None, "integers"),
    ],
)
def test_tile_setting_parses_size_wxh_auto(value, expected, error):
    if error:
        with pytest.raises(UsageError, match=error):
            InferenceSettings(tile=value)
    else:
        assert InferenceSettings(tile=value).tile == expected


@pytest.mark.parametrize("overlap, ok", [(0.0, True), (0.2, True), (0.9, True), (-0.1, False), (0.95, False)])
def test_tile_overlap_is_validated(overlap, ok):
    if ok:
        assert InferenceSettings(tile_overlap=overlap).tile_overlap == overlap
    else:
        with pytest.raises(UsageError, match="tile_overlap"):
            InferenceSettings(tile_overlap=overlap)


def test_tiling_flags_reach_the_settings_and_round_trip_json():
    from masklab.cli.options import add_model_arguments

    p = argparse.ArgumentParser()
    add_model_arguments(p)
    args = p.parse_args(["--tile", "256x128", "--tile-overlap", "0.3", "--tile-full-pass"])
    s = InferenceSettings.from_args(args)
    assert (s.tile, s.tile_overlap, s.tile_full_pass) == ((256, 128), 0.3, True)
    assert InferenceSettings.from_json(json.loads(json.dumps(s.to_json()))) == s
    default = InferenceSettings.from_args(p.parse_args([]))
    assert (default.tile, default.tile_overlap, default.tile_full_pass) == (None, 0.2, False)


# -- the grid -------------------------------------------------------------------------------------
def test_tile_windows_cover_the_image_with_full_size_overlapping_tiles():
    wins = tile_windows(image_hw=(300, 410), tile_wh=(128, 100), overlap=0.2)
    cover = np.zeros((300, 410), int)
    for x0, y0, x1, y1 in wins:
        assert (x1 - x0, y1 - y0) == (128, 100)
        cover[y0:y1, x0:x1] += 1
    assert cover.min() >= 1
    xs = sorted({int(w[0]) for w in wins})
    assert xs[-1] + 128 == 410 and all(b - a <= 128 - 20 for a, b in zip(xs, xs[1:]))  # >= 20% overlap
    small = tile_windows(image_hw=(50, 60), tile_wh=(128, 128), overlap=0.2)
    assert small.tolist() == [[0, 0, 60, 50]]


def test_resolve_tile_auto_follows_the_model_input():
    assert resolve_tile("auto", image_hw=(128, 128), min_size=128, max_size=128) is None
    assert resolve_tile("auto", image_hw=(100, 90), min_size=128, max_size=128) is None
    assert resolve_tile("auto", image_hw=(600, 800), min_size=800, max_size=1333) is None
    assert resolve_tile("auto", image_hw=(129, 128), min_size=128, max_size=128) == (128, 128)
    assert resolve_tile("auto", image_hw=(3000, 4000), min_size=800, max_size=1333) == (800, 800)
    assert resolve_tile((512, 256), image_hw=(300, 400), min_size=128, max_size=128) == (400, 256)
    assert resolve_tile(None, image_hw=(3000, 4000), min_size=128, max_size=128) is None


# -- merging, pixel-exact with the blob runtime -----------------------------------------------------
def _as_set(det) -> set[tuple]:
    """Each detection as (class, RLE counts) of its full-image mask."""
    rles = det.masks.to_rle() if isinstance(det.masks, CroppedMasks) else encode_rle(det.masks)
    return {(int(c), r["counts"]) for c, r in zip(det.class_ids, rles)}


def test_object_across_a_tile_corner_is_one_instance_equal_to_the_untiled_mask():
    wins = tile_windows(image_hw=(300, 300), tile_wh=(128, 128), overlap=0.2)
    assert [102, 102, 230, 230] in wins.tolist()
    # a disc centred on (115, 115): across the corner where tiles (0,0), (102,0), (0,102), (102,102)
    # meet, and larger than the overlap band (26 px), so no tile sees it whole
    im = disc_scene(300, 300, [(1, 120, 118, 40)])
    rt = BlobRuntime()
    ref = rt.predict([im])[0]
    raw = [rt.predict([im[y0:y1, x0:x1]])[0] for x0, y0, x1, y1 in wins.tolist()]
    assert sum(len(d.scores) for d in raw) >= 4  # cut into parts by the tiles, none of them whole
    assert all(not (d.masks.sum(axis=(1, 2)) == ref.masks.sum()).any() for d in raw)
    det = predict_tiled(BlobRuntime(), im, tile_wh=(128, 128), overlap=0.2)
    assert len(det.scores) == 1
    assert np.array_equal(det.masks[0], ref.masks[0])
    assert det.boxes.tolist() == ref.boxes.tolist()


def test_duplicates_from_overlaps_are_removed_and_every_object_matches_untiled():
    rng = np.random.default_rng(3)
    discs, rects = [], []
    # small objects on a grid, jittered: many fall in overlap bands (seen whole by 2-4 tiles), some cross borders
    for i, cy in enumerate(range(20, 480, 45)):
        for j, cx in enumerate(range(20, 620, 45)):
            discs.append((1 + (i + j) % 3, cx + int(rng.integers(-6, 7)), cy + int(rng.integers(-6, 7)), int(rng.integers(5, 15))))
    im = disc_scene(500, 640, discs)
    rects = [(2, 90, 300, 400, 330)]  # a long bar across several tiles, larger than a tile
    im = np.maximum(im, blob_scene(500, 640, rects))
    ref = BlobRuntime().predict([im])[0]
    rt = BlobRuntime()
    det = predict_tiled(rt, im, tile_wh=(128, 128), overlap=0.25)
    parts = sum(len(d.scores) for d in (BlobRuntime().predict([im[y0:y1, x0:x1]])[0]
                                         for x0, y0, x1, y1 in tile_windows(image_hw=(500, 640), tile_wh=(128, 128), overlap=0.25).tolist()))
    assert len(ref.scores) > 100 and parts > len(ref.scores) * 1.3  # many duplicates and parts before merging
    assert len(det.scores) == len(ref.scores)
    assert _as_set(det) == _as_set(ref)
    assert np.all(np.diff(det.scores) <= 0)  # best first


def test_full_pass_merges_with_tiles_without_duplicates():
    im = disc_scene(260, 300, [(1, 60, 60, 20), (3, 150, 130, 90)])  # one disc larger than a tile
    ref = BlobRuntime().predict([im])[0]
    det = predict_tiled(BlobRuntime(), im, tile_wh=(96, 96), overlap=0.2, full_pass=True)
    assert _as_set(det) == _as_set(ref)


def test_merge_keeps_different_classes_and_disjoint_objects_apart():
    parts = Parts.empty()
    from masklab.structures.detections import Detections

    m = np.zeros((2, 20, 20), bool)
    m[0, 2:8, 2:8] = m[1, 2:8, 2:8] = True  # same pixels, different classes
    parts.add(Detections(boxes=np.zeros((2, 4), np.float32), scores=np.array([0.9, 0.8], np.float32),
                         class_ids=np.array([1, 2]), masks=m), (0, 0, 20, 20))
    empty = np.zeros((1, 20, 20), bool)  # an empty mask is dropped
    parts.add(Detections(boxes=np.zeros((1, 4), np.float32), scores=np.array([0.7], np.float32),
                         class_ids=np.array([1]), masks=empty), (0, 0, 20, 20))
    det = merge_parts(parts, image_size=(20, 20))
    assert sorted(det.class_ids.tolist()) == [1, 2]
    assert merge_parts(Parts.empty(), image_size=(5, 5)).masks.shape == (0, 5, 5)


# -- cropped masks ----------------------------------------------------------------------------------
def test_cropped_masks_answer_like_dense_masks():
    rng = np.random.default_rng(0)
    for t in range(60):
        h, w = (int(v) for v in rng.integers(1, 25, 2))
        m = rng.random((4, h, w)) < rng.random()
        if t % 3 == 0:
            m[:, : h // 2] = False
        if t % 4 == 0:
            m[1] = True  # a mask that ends at the last pixel
        c = CroppedMasks.from_dense(m)
        assert c.to_rle() == encode_rle(m)
        assert np.array_equal(c.dense(), m) and np.array_equal(np.asarray(c), m)
        assert np.array_equal(c.areas(), m.sum(axis=(1, 2)))
        assert np.allclose(c.perimeters(), mask_perimeters(m))
        assert np.allclose(c.centroids(), mask_centroids(m), equal_nan=True)
        assert np.array_equal(c.any(axis=0), m.any(axis=0))
        assert np.array_equal(c[2], m[2]) and np.array_equal(c[[0, 3]].dense(), m[[0, 3]])


def test_instances_with_cropped_masks_write_the_same_json():
    im = disc_scene(90, 120, [(1, 30, 30, 12), (2, 90, 60, 20), (3, 60, 80, 6)])
    det = BlobRuntime().predict([im])[0]
    dense = Instances(boxes=det.boxes, masks=det.masks, scores=det.scores, class_ids=det.class_ids,
                      labels=["a", "b", "c"][: len(det.scores)], image_size=(90, 120))
    crop = dense.cropped()
    assert crop.is_cropped and not dense.is_cropped
    assert crop.to_dict() == dense.to_dict()
    assert crop.to_coco(1) == dense.to_coco(1)
    assert Instances.cat([crop, dense]).to_dict() == Instances.cat([dense, dense]).to_dict()
    assert crop[1:].to_dict() == dense[1:].to_dict()
    assert np.array_equal(crop.dense().masks, dense.masks)
    half = crop.resized((45, 60))
    assert half.image_size == (45, 60) and abs(int(half.areas().sum()) * 4 - int(dense.areas().sum())) < 0.1 * dense.areas().sum()


# -- through Segmenter -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_segmenters():
    from masklab import Segmenter

    return {t: Segmenter(DEMO, device="cpu", tile=t) for t in (None, "auto", 128)}


def test_segmenter_tiled_with_blob_runtime_matches_untiled_pixel_for_pixel(demo_segmenters):
    seg = demo_segmenters[128]
    im = disc_scene(300, 420, [(1, 115, 115, 30), (2, 230, 100, 11), (3, 330, 220, 60), (1, 30, 260, 9)])
    seg_rt, seg.runtime = seg.runtime, BlobRuntime()
    try:
        inst = seg(im)
        calls = seg.runtime.calls
    finally:
        seg.runtime = seg_rt
    ref = BlobRuntime().predict([im])[0]
    assert calls > 1 and len(inst) == len(ref.scores) == 4
    assert not inst.is_cropped  # small results stay dense, as every untiled result
    assert {(c, r["counts"]) for c, r in zip(inst.class_ids.tolist(), encode_rle(inst.masks))} == _as_set(ref)
    assert set(inst.labels) == {"square", "circle", "triangle"}


def test_tile_auto_does_not_tile_an_image_no_larger_than_the_model_input(demo_segmenters):
    from masklab.data.shapes import random_scene

    scene = random_scene(np.random.default_rng(5), size=128)
    auto, off = demo_segmenters["auto"], demo_segmenters[None]
    assert auto.tile_for((128, 128)) is None and auto.tile_for((129, 300)) == (128, 128)
    a, b = auto(scene.image), off(scene.image)
    assert len(b) > 0
    assert a.to_dict() == b.to_dict()
    rt = BlobRuntime()
    auto_rt, auto.runtime = auto.runtime, rt
    try:
        auto(scene.image)
    finally:
        auto.runtime = auto_rt
    assert rt.shapes == [(128, 128)]  # one pass over the whole image


@pytest.mark.slow
def test_demo_model_tiled_finds_small_shapes_the_whole_image_pass_misses(demo_segmenters):
    from masklab.data.shapes import large_scene

    scene = large_scene(np.random.default_rng(0), height=384, width=512, n_shapes=14)
    whole, tiled = demo_segmenters[None](scene.image), demo_segmenters[128](scene.image)

    def hits(inst) -> int:
        found = 0
        for m, cls in zip(np.asarray(scene.masks), scene.classes):
            inter = (inst.masks & m).sum(axis=(1, 2))
            iou = inter / np.maximum((inst.masks | m).sum(axis=(1, 2)), 1)
            found += bool(len(inst)) and bool(((iou >= 0.5) & (np.array(inst.labels) == cls)).any())
        return found

    assert len(scene.classes) == 14
    assert hits(tiled) >= 11 > hits(whole)  # measured: 14 tiled, 0 whole-image
    assert len(tiled) <= 16  # duplicates merged: about one detection per shape


@pytest.mark.slow
def test_eval_with_tile_scores_the_stitched_outputs(tmp_path):
    from masklab.cli import main
    from masklab.data.shapes import write_large_shapes

    data = write_large_shapes(tmp_path / "big", n=1, height=384, width=512, n_shapes=14, seed=2)
    aps = {}
    for name, extra in (("tiled", ["--tile", "128"]), ("whole", [])):
        out = tmp_path / name
        assert main(["eval", "--data", str(data), "--model", DEMO, "--device", "cpu", "--out", str(out), "--no-plots",
                     "--no-progress", *extra]) == 0
        doc = json.loads((out / "eval.json").read_text())
        aps[name] = doc
    tiled, whole = aps["tiled"], aps["whole"]
    seg_key = next(k for k in ("segm", "mask") if k in tiled)
    assert tiled[seg_key]["AP50"] > 0.8 > whole[seg_key]["AP50"] + 0.5
    pred = json.loads((tmp_path / "tiled" / "predictions.json").read_text())
    assert pred and all(p["segmentation"]["size"] == [384, 512] for p in pred)  # full-image masks, stitched


# -- bounded memory on a huge image -------------------------------------------------------------------
_HUGE_CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[3])
from tiling_helpers import BlobRuntime
from masklab import Segmenter
from masklab.io.formats.writer import OutputWriter
from masklab.io.inputs import expand_inputs
from masklab.runs import run_segment

seg = Segmenter(sys.argv[4], device="cpu", tile=1024)
seg.runtime = BlobRuntime()  # exact and fast: the model would need ~9000 tiles at 128 px here
summary = run_segment(expand_inputs([sys.argv[1]]), sys.argv[2], seg, progress=False, max_pixels=200_000_000,
                      writer=OutputWriter(sys.argv[2], model_name="blobs", categories=seg.spec.categories),
                      keep_instances=True)
inst = summary.results[0].instances
# VmHWM is this process's own peak; ru_maxrss is inherited across fork+exec (it would report pytest's peak)
hwm_kb = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
print(json.dumps({"peak_rss_mb": hwm_kb / 1024, "n": len(inst),
                  "cropped": inst.is_cropped, "tiles": seg.runtime.calls, "failures": len(summary.failures)}))
"""


@pytest.mark.slow
def test_huge_image_runs_in_bounded_memory(tmp_path):
    """12000 x 12000 (144 MP, over the default 100 MP cap) with 2500 objects, many across tile borders:
    per-image JSON and a reduced overlay written, peak RSS of the whole process under 3 GB."""
    import subprocess
    import sys

    import cv2
    from PIL import Image

    rng = np.random.default_rng(0)
    h = w = 12000
    grid = [(x, y) for y in range(150, h - 150, 230) for x in range(150, w - 150, 230)]
    chosen = rng.choice(len(grid), 2500, replace=False)
    discs = [(1 + int(k) % 3, grid[k][0] + int(rng.integers(-40, 41)), grid[k][1] + int(rng.integers(-40, 41)),
              int(rng.integers(12, 60))) for k in chosen]
    im = disc_scene(h, w, discs)
    path = tmp_path / "huge.png"
    cv2.imwrite(str(path), im[:, :, ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 1])
    del im
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", _HUGE_CHILD, str(path), str(out), str(Path(__file__).parent), DEMO],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    assert doc["failures"] == 0 and doc["cropped"] and doc["tiles"] == 15 * 15
    assert doc["n"] == 2500  # every disc once: none split at a border, no duplicate
    assert doc["peak_rss_mb"] < 3 * 1024, doc
    print("peak RSS MB", doc["peak_rss_mb"])
    record = json.loads((out / "huge.json").read_text())
    assert (record["width"], record["height"], len(record["instances"])) == (w, h, 2500)
    with Image.open(out / "huge.png") as overlay:
        assert overlay.size == (4096, 4096)


class _SlowThreadedBlobs(BlobRuntime):
    """Blob detections from several threads at once, slowest first (so results come back out of order
    unless the tiler restores it); records the most calls seen in flight."""

    concurrency = 3

    def __init__(self) -> None:
        super().__init__()
        import threading

        self.lock, self.active, self.most = threading.Lock(), 0, 0

    def predict(self, images):
        import time as _time

        with self.lock:
            self.active += 1
            self.most = max(self.most, self.active)
            n = self.calls
        _time.sleep(0.02 if n % 2 == 0 else 0.0)
        try:
            return super().predict(images)
        finally:
            with self.lock:
                self.active -= 1


def test_concurrent_tiles_give_the_sequential_result():
    im = disc_scene(300, 420, [(1, 115, 115, 30), (2, 230, 100, 11), (3, 330, 220, 60), (1, 30, 260, 9), (2, 200, 250, 25)])
    sequential = predict_tiled(BlobRuntime(), im, tile_wh=(96, 96), overlap=0.2, batch=1)
    rt = _SlowThreadedBlobs()
    concurrent = predict_tiled(rt, im, tile_wh=(96, 96), overlap=0.2, batch=1)  # the runtime's own: 3
    assert rt.most >= 2  # really ran calls at once
    assert len(sequential.scores) == 5
    assert np.array_equal(sequential.scores, concurrent.scores) and np.array_equal(sequential.boxes, concurrent.boxes)
    assert encode_rle(sequential.masks) == encode_rle(concurrent.masks)


def test_switch_after_the_timed_second_batch_runs_the_rest_on_the_new_runtime():
    im = disc_scene(300, 420, [(1, 115, 115, 30), (2, 230, 100, 11), (3, 330, 220, 60)])
    first, second = BlobRuntime(), BlobRuntime()
    asked = []

    def switch(left, seconds):
        asked.append((left, seconds))
        return second

    out = predict_tiled(first, im, tile_wh=(96, 96), overlap=0.2, batch=2, switch=switch)
    ref = predict_tiled(BlobRuntime(), im, tile_wh=(96, 96), overlap=0.2, batch=2)
    total = len(tile_windows(image_hw=(300, 420), tile_wh=(96, 96), overlap=0.2))
    assert first.calls == 4 and second.calls == total - 4  # two batches of two, then the new runtime
    assert len(asked) == 1 and asked[0][0] == total - 4 and asked[0][1] >= 0
    assert encode_rle(out.masks) == encode_rle(ref.masks) and len(ref.scores) == 3


def test_a_huge_tiled_image_prepares_the_fast_path_mid_image(monkeypatch, capsys):
    """A single image of many tiles is a long run: after two batches, auto prepares and switches."""
    import masklab.inference.segmenter as segmenter_module
    from masklab import Segmenter

    seg = Segmenter(DEMO, device="cpu", tile=64)
    if not seg.eager_by_default:
        pytest.skip("OpenVINO is not installed or a prepared model exists")
    prepared = []

    def prepare(self):  # stands in for the conversion (test_fast_default converts for real)
        prepared.append(True)
        self.runtime = BlobRuntime()
        return None

    monkeypatch.setattr(segmenter_module.Segmenter, "prepare", prepare)
    monkeypatch.setattr(segmenter_module, "worth_preparing", lambda *, images, seconds_per_image: images > 10)
    im = disc_scene(300, 420, [(1, 115, 115, 30), (2, 230, 100, 11), (3, 330, 220, 60)])
    inst = seg(im)
    assert prepared == [True] and seg.runtime.name == "blobs" and seg.runtime.calls > 0
    assert "more tiles at" in capsys.readouterr().err and len(inst) >= 3
