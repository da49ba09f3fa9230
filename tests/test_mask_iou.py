"""The optional MaskIoU head (Mask Scoring R-CNN): its IoU targets, training it, cards that build it,
its prediction as ``quality`` in the eager, torch-fast and exported runtimes, and models without it unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from masklab.models.card import ModelCard, WeightsRef
from masklab.models.mask_iou import attach_mask_iou_head, config_from_state, head_config
from masklab.structures.quality import mask_quality
from masklab.training.mask_iou import mask_iou_loss, mask_iou_predictions, mask_iou_targets

DEMO = Path(__file__).resolve().parents[1] / "masklab" / "assets" / "shapes_small.safetensors"


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # kinder to a shared CPU; the arithmetic of every compared path stays the same
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from masklab.data.shapes import write_shapes

    return write_shapes(tmp_path_factory.mktemp("shapes") / "train", n=12, seed=5)


def _demo_module():
    from masklab import Segmenter

    return Segmenter(DEMO, device="cpu", backend="torch").loaded.module


def _spread_head(module, seed: int = 0):
    """Attach a head whose random prediction varies between detections (the default init predicts ~0,
    which clipping would turn into a constant: comparisons of it could not fail)."""
    torch.manual_seed(seed)
    head = attach_mask_iou_head(module)
    with torch.no_grad():
        head.predictor.weight.normal_(std=0.003)  # predictions spread within (0, 1)
        head.predictor.bias.fill_(0.5)
    return head


def _image(shapes: Path, k: int = 1) -> np.ndarray:
    from masklab.io.images import load_image

    return load_image(shapes.parent / "images" / f"{k:06d}.png").array


def test_targets_are_the_iou_of_the_thresholded_mask_for_the_objects_class():
    logits = torch.full((3, 2, 4, 4), -5.0)
    logits[0, 1, :2] = 5.0  # class 1: top half
    logits[1, 0, :, :2] = 5.0  # class 0: left half (class 1 of RoI 1 stays empty)
    gt = torch.zeros(3, 4, 4)
    gt[0] = 1.0  # whole RoI: IoU 8/16
    gt[1, :, :2] = 0.7  # >= 0.5: the same left half: IoU 1
    got = mask_iou_targets(logits, torch.tensor([1, 0, 1]), gt)  # RoI 2: both empty -> 0
    torch.testing.assert_close(got, torch.tensor([0.5, 1.0, 0.0]))
    got = mask_iou_targets(logits, torch.tensor([0, 1, 1]), gt)  # another class's mask: empty
    torch.testing.assert_close(got, torch.tensor([0.0, 0.0, 0.0]))


def test_head_sizes_round_trip_through_the_state_dict_and_a_second_head_is_refused():
    m = _demo_module()
    assert config_from_state(m.state_dict()) is None and head_config(m) is None
    attach_mask_iou_head(m)
    cfg = head_config(m)
    assert cfg == {"in_channels": 128, "num_classes": 4, "conv_channels": 128, "fc_channels": 128, "num_convs": 2,
                   "roi_size": 14}
    assert config_from_state(m.state_dict()) == cfg
    assert any(k.startswith("roi_heads.mask_iou_head.") for k in m.state_dict())
    with pytest.raises(ValueError, match="already"):
        attach_mask_iou_head(m)


def _train_steps(module, ds, steps: int, *, lr: float) -> list[float]:
    from masklab.training.model import apply_freeze

    head = module.roi_heads.mask_iou_head
    opt = torch.optim.AdamW(head.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 10)  # warm-up, as masklab train's
        module.train()
        apply_freeze(module, "heads")  # trained BN statistics stay; the class predictors and the head train
        for p in module.parameters():
            p.requires_grad_(False)
        for p in head.parameters():
            p.requires_grad_(True)
        images, targets = zip(*[ds[(2 * step + j) % len(ds)] for j in range(2)])
        out = module(list(images), list(targets))
        assert {"loss_mask", "loss_classifier"} <= set(out)  # torchvision's own losses are still there
        loss = out["loss_mask_iou"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    module.eval()
    return losses


def _roi_correlation(module, ds) -> tuple[float, int]:
    """Spearman of the head's prediction and the true IoU over the positive RoIs of ``ds`` (the training
    forward samples them; the head then runs in eval mode), and how many there were."""
    from masklab.evaluation.mask_quality import spearman
    from masklab.training.model import apply_freeze

    head = module.roi_heads.mask_iou_head
    preds, trues = [], []

    def record(roi_heads, kept):  # as a loss function: sees the positive RoIs of the forward
        p, t = mask_iou_predictions(roi_heads, kept)
        preds.extend(p.tolist())
        trues.extend(t.tolist())
        return p.sum() * 0.0

    loss_fn, head.loss_fn = head.loss_fn, record
    for i in range(0, len(ds) - 1, 2):
        torch.manual_seed(i)  # the same RoIs for every model compared
        module.train()
        apply_freeze(module, "heads")
        with torch.no_grad():
            module(*map(list, zip(*[ds[i], ds[i + 1]])))
    head.loss_fn = loss_fn
    module.eval()
    return spearman(preds, trues), len(preds)


@pytest.mark.slow
def test_trained_head_predicts_true_iou(shapes, tmp_path):
    """A head trained for 30 steps on the shipped model (everything else frozen) ranks the positive RoIs
    of other images by their true mask IoU (Spearman > 0.3 over >= 60 RoIs, where chance gives 0 +- 0.13),
    and its loss falls."""
    from masklab.data.dataset import open_dataset
    from masklab.data.shapes import write_shapes
    from masklab.training.data import TorchDataset

    ds = TorchDataset(open_dataset(str(shapes.parent)), augment=False)
    held = TorchDataset(open_dataset(str(write_shapes(tmp_path / "held", n=8, seed=9).parent)), augment=False)
    m = _demo_module()
    torch.manual_seed(0)
    attach_mask_iou_head(m, loss=mask_iou_loss)
    before, n = _roi_correlation(m, held)
    losses = _train_steps(m, ds, 30, lr=1e-3)
    after, n_after = _roi_correlation(m, held)
    assert n == n_after >= 60
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses
    assert after > 0.3 and after > (before or 0.0) + 0.2, (before, after)


def test_model_card_round_trip_keeps_the_head():
    card = ModelCard(name="x", arch="maskrcnn_mobilenet_v3_fpn", categories=("__background__", "a"), min_size=64,
                     max_size=64, mask_iou_head={"in_channels": 128, "num_classes": 2, "conv_channels": 128,
                                                 "fc_channels": 128, "num_convs": 4, "roi_size": 14})
    doc = json.loads(json.dumps(card.to_json()))
    assert doc["mask_iou_head"]["fc_channels"] == 128
    assert ModelCard.from_json(doc) == card
    assert ModelCard.from_json({k: v for k, v in doc.items() if k != "mask_iou_head"}).mask_iou_head is None


@pytest.fixture(scope="module")
def headed(tmp_path_factory):
    """The shipped model with a (random, spread-out) MaskIoU head, packaged as weights + card."""
    from masklab.training.checkpoint import write_safetensors

    m = _demo_module()
    _spread_head(m)
    out = tmp_path_factory.mktemp("headed")
    write_safetensors(out / "headed.safetensors", m.state_dict(), {"format": "masklab-model"})
    card = ModelCard.from_json(json.loads(DEMO.with_suffix(".json").read_text()))
    card = card.replace(name="headed", weights=WeightsRef(file="headed.safetensors"), mask_iou_head=head_config(m))
    (out / "headed.json").write_text(json.dumps(card.to_json()))
    return out / "headed.safetensors", m


def test_card_builds_the_head_and_quality_is_its_prediction(headed, shapes):
    from masklab import Segmenter

    path, module = headed
    seg = Segmenter(str(path), device="cpu", backend="torch", score_thresh=0.3)
    assert seg.card.mask_iou_head == head_config(module)
    for k, v in module.state_dict().items():
        torch.testing.assert_close(seg.loaded.module.state_dict()[k], v, rtol=0, atol=0, msg=k)
    image = _image(shapes)
    det = seg.runtime.predict([image])[0]
    assert len(det.scores) >= 2 and det.quality.shape == det.scores.shape
    assert ((det.quality >= 0) & (det.quality <= 1)).all() and det.quality.std() > 1e-3
    inst = seg(image)
    np.testing.assert_allclose(inst.quality, det.quality, rtol=0, atol=0)  # replaces the training-free score
    assert not np.allclose(inst.quality, mask_quality(det.mask_probs), atol=1e-3)
    # By hand: the head on the mask features of the detected boxes, for the detected class.
    m = seg.loaded.module
    with torch.inference_mode():
        x = torch.from_numpy(image).permute(2, 0, 1).float().div(255)
        batch, _ = m.transform([x])
        feats = m.backbone(batch.tensors)
        res, _ = m.roi_heads(feats, m.rpn(batch, feats)[0], batch.image_sizes)
        pooled = m.roi_heads.mask_roi_pool(feats, [res[0]["boxes"]], batch.image_sizes)
        raw = m.roi_heads.mask_iou_head(pooled, res[0]["masks"])
    want = raw[torch.arange(len(raw)), res[0]["labels"]].clamp(0, 1).numpy()
    np.testing.assert_allclose(det.quality, want, atol=1e-6)
    # torch-fast (channels-last copy of the module: its own copy of the head) agrees.
    fast = Segmenter(str(path), device="cpu", backend="torch-fast", score_thresh=0.3)
    got = fast.runtime.predict([image])[0]
    np.testing.assert_allclose(got.quality, det.quality, atol=1e-4)


@pytest.mark.slow
def test_exported_models_give_the_same_quality(headed, shapes, tmp_path):
    """TorchScript, ONNX Runtime and OpenVINO run the traced core's fifth output, ``mask_iou``: the eager
    quality to 1e-4."""
    from masklab import Segmenter
    from masklab.export import FORMATS, export_loaded, trace_core
    from masklab.models.loading import load_model
    from masklab.settings import InferenceSettings

    path, _ = headed
    formats = ["torchscript"] + [f for f, mod in (("onnx", "onnxruntime"), ("openvino", "openvino")) if _has(mod)]
    loaded = load_model(InferenceSettings(model=str(path), score_thresh=0.3))
    traced = trace_core(loaded.module)
    eager = Segmenter(str(path), device="cpu", backend="torch", score_thresh=0.3)
    image = _image(shapes)
    a = eager.runtime.predict([image])[0]
    assert len(a.scores) >= 2
    for fmt in formats:
        out = export_loaded(loaded, fmt=fmt, out=tmp_path / f"m{FORMATS[fmt]}", traced=traced)
        card = json.loads(Path(str(out) + ".card.json").read_text())
        assert "mask_iou" in card["outputs"] and card["mask_iou_head"]["num_classes"] == 4
        exported = Segmenter(str(out), device="cpu")
        assert exported.runtime.name == fmt
        b = exported.runtime.predict([image])[0]
        assert len(b.scores) == len(a.scores), fmt
        np.testing.assert_allclose(b.boxes, a.boxes, atol=1e-3, err_msg=fmt)
        np.testing.assert_allclose(b.quality, a.quality, atol=1e-4, err_msg=fmt)
        np.testing.assert_allclose(exported(image).quality, b.quality, atol=0, err_msg=fmt)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_model_without_the_head_is_unchanged(shapes, tmp_path):
    """No head: no ``mask_iou`` anywhere, quality is the training-free score, the export has 4 outputs."""
    from masklab import Segmenter
    from masklab.export.core import TensorCore, output_names

    seg = Segmenter(DEMO, device="cpu", backend="torch")
    assert seg.card.mask_iou_head is None
    image = _image(shapes)
    det = seg.runtime.predict([image])[0]
    assert det.quality is None and len(det.scores) >= 1
    np.testing.assert_allclose(seg(image).quality, mask_quality(det.mask_probs), atol=0)
    m = seg.loaded.module
    assert output_names(m) == ("boxes", "scores", "labels", "mask_probs")
    with torch.inference_mode():
        outs = TensorCore(m)(torch.from_numpy(image).permute(2, 0, 1).float().div(255))
    assert len(outs) == 4
    before = {k: v.clone() for k, v in m.state_dict().items()}
    attach_mask_iou_head(m)
    with torch.inference_mode():
        with_head = TensorCore(m)(torch.from_numpy(image).permute(2, 0, 1).float().div(255))
    assert len(with_head) == 5
    for a, b in zip(outs, with_head[:4]):  # the head adds an output and changes none of the others
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items() if k in before)


@pytest.mark.slow
def test_cli_train_with_the_head_makes_a_model_whose_quality_is_the_heads(shapes, tmp_path):
    from masklab import Segmenter
    from masklab.cli import main
    from masklab.training import read_metrics

    run = tmp_path / "run"
    rc = main(["train", "--data", str(shapes.parent), "--out", str(run), "--model", "small", "--init", "scratch",
               "--min-size", "64", "--max-size", "64", "--batch-size", "2", "--max-steps", "2", "--warmup-steps", "1",
               "--device", "cpu", "--no-augment", "--no-progress", "--mask-iou-head"])
    assert rc == 0
    card = json.loads((run / "model.json").read_text())
    assert card["mask_iou_head"]["num_classes"] == 4
    assert json.loads((run / "settings.json").read_text())["config"]["mask_iou_head"] is True
    rows = read_metrics(run)
    assert rows and rows[-1]["loss_mask_iou"] > 0
    seg = Segmenter(str(run), device="cpu", backend="torch", score_thresh=0.0)
    assert head_config(seg.loaded.module) == card["mask_iou_head"]
    image = _image(shapes)
    det = seg.runtime.predict([image])[0]
    assert det.quality is not None and det.quality.shape == det.scores.shape
    # --resume rebuilds the head before loading the checkpoint (strict: its weights are there) and trains on.
    assert main(["train", "--resume", str(run), "--max-steps", "3", "--no-progress"]) == 0
    assert json.loads((run / "model.json").read_text())["trained"]["steps"] == 3


@pytest.mark.slow
def test_torchrun_two_processes_train_the_head(tmp_path):
    """DDP: the head's loss is computed inside the model's forward (a parameter used outside it would be
    marked ready twice by DDP's reducer)."""
    import os
    import subprocess
    import sys

    from masklab.data.shapes import write_shapes
    from masklab.training.checkpoint import load_checkpoint

    write_shapes(tmp_path / "train", n=4, size=64, seed=5)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "masklab", "train", "--data", str(tmp_path / "train"), "--out", str(run), "--model", "small",
           "--init", "scratch", "--min-size", "64", "--max-size", "64", "--batch-size", "1", "--epochs", "1",
           "--device", "cpu", "--no-progress", "--warmup-steps", "1", "--mask-iou-head"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    weights, state = load_checkpoint(run, "last")
    assert state["step"] == 2
    head = {k: v for k, v in weights.items() if k.startswith("roi_heads.mask_iou_head.")}
    assert head and all(torch.isfinite(v).all() for v in head.values())
