"""Per-instance mask quality (structures/quality.py, Instances.quality, every output, --min-quality),
the quality report of `masklab eval`, and mask refinement (guided filter; SAM on a random tiny SAM)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from masklab.errors import UsageError
from masklab.settings import InferenceSettings
from masklab.structures.instances import Instances
from masklab.structures.quality import QUALITY_CANDIDATES, mask_quality, stability_score

DEMO = Path(__file__).resolve().parents[1] / "masklab" / "assets" / "shapes_small.safetensors"


def _blob(sharpness: float, m: int = 28, radius: float = 8) -> np.ndarray:
    yy, xx = np.mgrid[:m, :m]
    r = np.hypot(xx - m / 2, yy - m / 2)
    return 1.0 / (1.0 + np.exp((r - radius) * sharpness))  # a disc; small sharpness = a soft, uncertain outline


def test_candidates_rank_sharp_masks_above_soft_ones_and_stay_in_range():
    probs = np.stack([_blob(4.0), _blob(0.6), np.zeros((28, 28))]).astype(np.float32)
    for method in QUALITY_CANDIDATES:
        q = mask_quality(probs, method=method)
        assert q.dtype == np.float32 and q.shape == (3,)
        assert ((q >= 0) & (q <= 1)).all()
        assert q[0] > q[1], method  # the sharp disc is the better mask
        assert q[2] == 0.0  # an empty mask
    assert stability_score(probs[None, 0][:, None]).shape == (1,)  # (N, 1, M, M) as the head gives it
    with pytest.raises(ValueError, match="one of"):
        mask_quality(probs, method="entropy")


def _inst(n: int, quality) -> Instances:
    masks = np.zeros((n, 8, 8), bool)
    for i in range(n):
        masks[i, i : i + 2, 1:4] = True
    return Instances.from_masks(masks, class_ids=[1] * n, labels=["a"] * n, scores=np.linspace(0.9, 0.5, n)) if quality is None \
        else Instances(boxes=np.zeros((n, 4)), masks=masks, scores=[0.9] * n, class_ids=[1] * n, labels=["a"] * n,
                       image_size=(8, 8), quality=quality)


def test_instances_quality_survives_indexing_concat_filter_and_json():
    inst = _inst(3, [0.2, 0.9, 0.6])
    assert inst.quality.dtype == np.float32
    assert inst[1:].quality.tolist() == pytest.approx([0.9, 0.6])
    assert inst[np.array([True, False, True])].quality.tolist() == pytest.approx([0.2, 0.6])
    assert Instances.cat([inst, inst[:1]]).quality.tolist() == pytest.approx([0.2, 0.9, 0.6, 0.2])
    assert Instances.cat([inst, _inst(2, None)]).quality is None  # unknown for some: unknown, not invented
    assert inst.filter(min_quality=0.5).quality.tolist() == pytest.approx([0.9, 0.6])
    assert inst.cropped().quality.tolist() == pytest.approx(inst.quality.tolist())
    d = inst.to_dict()
    assert [x["quality"] for x in d] == pytest.approx([0.2, 0.9, 0.6])
    assert Instances.from_dict(d, (8, 8)).quality.tolist() == pytest.approx([0.2, 0.9, 0.6])
    assert [r["quality"] for r in inst.to_coco(1)] == pytest.approx([0.2, 0.9, 0.6])
    plain = _inst(2, None)
    assert plain.quality is None and plain.to_dict()[0]["quality"] is None and "quality" not in plain.to_coco(1)[0]
    with pytest.raises(ValueError, match="no quality"):
        plain.filter(min_quality=0.5)
    with pytest.raises(ValueError, match="quality"):
        Instances(boxes=np.zeros((1, 4)), masks=np.zeros((1, 8, 8), bool), scores=[1], class_ids=[1], labels=["a"],
                  image_size=(8, 8), quality=[0.1, 0.2])


def test_settings_validate_quality_options():
    with pytest.raises(UsageError, match="min_quality"):
        InferenceSettings(min_quality=1.5)
    with pytest.raises(UsageError, match="did you mean 'guided'"):
        InferenceSettings(refine="guide")
    with pytest.raises(UsageError, match="sam-checkpoint"):
        InferenceSettings(refine="sam")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from masklab.data.shapes import write_shapes

    return write_shapes(tmp_path_factory.mktemp("shapes"), n=6, seed=11)


@pytest.fixture(scope="module")
def demo():
    from masklab import Segmenter

    return Segmenter(DEMO, device="cpu")


def _image(shapes: Path, k: int = 1) -> np.ndarray:
    from masklab.io.images import load_image

    return load_image(shapes.parent / "images" / f"{k:06d}.png").array


@pytest.mark.slow
def test_segmenter_gives_quality_from_the_mask_head_and_min_quality_filters(demo, shapes):
    image = _image(shapes)
    det = demo.runtime.predict([image])[0]
    assert det.mask_probs.shape == (len(det.scores), 28, 28)
    inst = demo(image)
    assert len(inst) >= 2 and inst.quality is not None
    np.testing.assert_allclose(inst.quality, mask_quality(det.mask_probs), atol=1e-6)
    q = float(np.median(inst.quality))
    kept = demo.with_options()  # same model; a new settings copy
    kept.inference = demo.inference.replace(min_quality=q)
    got = kept(image)
    assert 0 < len(got) < len(inst) or (inst.quality >= q).all()
    assert (got.quality >= q).all() and len(got) == int((inst.quality >= q).sum())


@pytest.mark.slow
def test_cli_outputs_carry_quality_and_min_quality(tmp_path, shapes):
    pa = pytest.importorskip("pyarrow")
    from masklab.cli import main
    from masklab.runs.ray.tables import instance_table

    out = tmp_path / "out"
    base = ["segment", str(shapes.parent / "images" / "000001.png"), "--model", str(DEMO), "--device", "cpu",
            "--viz", "none"]
    assert main(base + ["--out", str(out), "--save", "json,csv,coco"]) == 0
    doc = json.loads((out / "000001.json").read_text())
    qs = [d["quality"] for d in doc["instances"]]
    assert len(qs) >= 2 and all(0 <= q <= 1 for q in qs)
    with open(out / "measurements.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["quality"]) for r in rows] == pytest.approx(qs)
    import pyarrow.parquet as pq

    pq.write_table(instance_table([("000001", doc)]), tmp_path / "i.parquet")
    assert pq.read_table(tmp_path / "i.parquet").column("quality").to_pylist() == pytest.approx(qs)
    assert pa is not None
    q = sorted(qs)[len(qs) // 2]
    assert main(base + ["--out", str(tmp_path / "filtered"), "--min-quality", str(q)]) == 0
    kept = [d["quality"] for d in json.loads((tmp_path / "filtered" / "000001.json").read_text())["instances"]]
    assert kept and all(k >= q - 1e-6 for k in kept) and len(kept) == sum(v >= q - 1e-6 for v in qs)


def test_web_page_lists_quality():
    static = Path(__file__).resolve().parents[1] / "masklab" / "serve" / "static"
    assert ">Quality</th>" in (static / "index.html").read_text()
    assert "d.quality" in (static / "app.js").read_text()


@pytest.mark.slow
def test_eval_reports_quality_boundary_ap_and_calibration(tmp_path, shapes):
    from masklab.cli import main

    out = tmp_path / "eval"
    assert main(["eval", "--data", str(shapes), "--model", str(DEMO), "--device", "cpu", "--out", str(out), "--no-progress"]) == 0
    doc = json.loads((out / "eval.json").read_text())
    assert 0 < doc["boundary"]["AP"] <= doc["segm"]["AP"] + 1e-9  # min(mask, boundary IoU) <= mask IoU
    assert doc["boundary_dilation_ratio"] == 0.02
    assert all(pc["boundary"] is not None for pc in doc["per_class"].values())
    q = doc["quality"]
    assert q["predictions"] > 0 and sum(b["count"] for b in q["calibration"]) == q["predictions"]
    assert q["spearman"] is not None and -1 <= q["spearman"] <= 1
    assert q["rescored"]["segm_AP"] == doc["segm"]["AP"] and 0 < q["rescored"]["segm_AP_rescored"] <= 1
    report = (out / "report.md").read_text()
    assert "## Mask quality" in report and "| boundary |" in report.replace("| metric | mask | boundary | box |", "| boundary |")
    assert (out / "quality_calibration.png").stat().st_size > 1000


def test_spearman_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    from masklab.evaluation.mask_quality import calibration_bins, spearman

    rng = np.random.default_rng(0)
    a = np.round(rng.random(50), 1)
    b = a + rng.normal(0, 0.2, 50)
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    assert spearman([1, 1, 1], [1, 2, 3]) is None
    bins = calibration_bins(np.array([0.05, 0.95, 1.0]), np.array([0.1, 0.9, 0.8]))
    assert [b["count"] for b in bins][0] == 1 and bins[-1]["count"] == 2 and bins[-1]["mean_iou"] == pytest.approx(0.85)


def test_guided_refinement_snaps_a_coarse_mask_to_the_image_edge():
    from masklab.inference.refine import refine_masks
    from masklab.structures.masks import paste_masks

    torch = pytest.importorskip("torch")
    h = w = 96
    yy, xx = np.mgrid[:h, :w]
    truth = np.hypot(xx - 48, yy - 48) < 30  # a sharp disc on a flat background
    image = np.where(truth[..., None], 200, 40).astype(np.uint8).repeat(3, axis=2)
    # a soft disc of 11.5 cells (one cell = 64/28 px): 26 px, 4 px short of the object's outline
    probs = _blob(0.5, radius=11.5)[None].astype(np.float32)
    box = np.array([[16, 16, 80, 80]], np.float32)
    coarse = paste_masks(torch.from_numpy(probs[:, None]), torch.from_numpy(box), (h, w))[0]
    fine = refine_masks(image, probs, box)[0]

    def iou(m):
        return (m & truth).sum() / (m | truth).sum()

    assert iou(fine) > iou(coarse) + 0.05
    assert not fine[~np.pad(np.ones((66, 66), bool), 15)].any()  # nothing outside the (padded) box


def _tiny_sam_checkpoint(path: Path) -> Path:
    torch = pytest.importorskip("torch")
    pytest.importorskip("segment_anything")
    from segment_anything.build_sam import _build_sam

    torch.manual_seed(0)
    sam = _build_sam(encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=[1], checkpoint=None)
    torch.save(sam.state_dict(), path)
    return path


@pytest.mark.slow
def test_sam_refinement_runs_on_a_random_tiny_sam(tmp_path, demo, shapes):
    from masklab import Segmenter
    from masklab.inference.sam import sam_refiner

    ckpt = _tiny_sam_checkpoint(tmp_path / "tiny_sam.pth")
    refiner = sam_refiner(str(ckpt))
    assert refiner.predictor.model.image_encoder.blocks[0].attn.num_heads == 2  # the size read back from the tensors
    image = _image(shapes)
    plain = demo(image)
    seg = Segmenter(DEMO, device="cpu", refine="sam", sam_checkpoint=str(ckpt))
    got = seg(image)
    assert len(got) == len(plain) and got.masks.shape == plain.masks.shape
    for new, old in zip(got.masks, plain.masks):  # each mask is the original or a SAM mask that agrees with it
        assert (new == old).all() or (new & old).sum() / max((new | old).sum(), 1) >= 0.5
    with pytest.raises(UsageError, match="no file"):
        sam_refiner(str(tmp_path / "missing.pth"))


def test_sam_refiner_keeps_only_masks_that_agree_with_the_coarse_one():
    pytest.importorskip("segment_anything")
    from types import SimpleNamespace

    from segment_anything.utils.transforms import ResizeLongestSide

    from masklab.inference.sam import SamRefiner

    coarse = np.zeros((2, 32, 32), bool)
    coarse[0, 4:20, 4:20] = True
    coarse[1, 20:30, 20:30] = True
    close = coarse[0].copy()
    close[4:20, 20:22] = True  # SAM's answer for box 0: the same object, a little wider (IoU 0.89)
    far = np.zeros((32, 32), bool)
    far[0:5, 0:5] = True  # for box 1: somewhere else (IoU 0)
    answers = iter([close, far])
    prompts = []

    def predict(*, box, mask_input, multimask_output):
        prompts.append(mask_input)
        return next(answers)[None], np.ones(1), None

    refiner = SamRefiner.__new__(SamRefiner)
    refiner.agree_iou = 0.5
    refiner.predictor = SimpleNamespace(set_image=lambda image: None, predict=predict, transform=ResizeLongestSide(64),
                                        model=SimpleNamespace(image_encoder=SimpleNamespace(img_size=64)))
    out = refiner.refine(np.zeros((32, 32, 3), np.uint8), np.array([[4, 4, 20, 20], [20, 20, 30, 30]], np.float32), coarse)
    assert (out[0] == close).all() and (out[1] == coarse[1]).all()
    assert prompts[0].shape == (1, 16, 16) and prompts[0].max() > 0 > prompts[0].min()  # the coarse mask as logits
