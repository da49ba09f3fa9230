"""Training: losses fall, checkpoints survive a crash mid-save, --resume continues exactly, a run dir is a model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from masklab.data.shapes import write_shapes
from masklab.errors import UsageError
from masklab.training import TrainConfig, parse_duration, parse_freeze, read_metrics, train
from masklab.training.checkpoint import checkpoint_paths, load_checkpoint, save_checkpoint

# 64-px images, 2 of them, one batch per epoch: each "epoch" is one optimizer step (CPU-cheap).
TINY = {"model": "small", "init": "scratch", "min_size": 64, "max_size": 64, "batch_size": 2, "warmup_steps": 1,
        "device": "cpu", "patience": None}


@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    write_shapes(root / "train", n=2, size=64, seed=3)
    write_shapes(root / "val", n=2, size=64, seed=4)
    return root


@pytest.fixture(autouse=True)
def _one_thread():
    # One thread: the same arithmetic order in both runs of the resume test, and kinder to a shared CPU.
    # (Entry points such as `masklab train` set the thread count; the library leaves it as it finds it.)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_parse_duration_and_freeze():
    assert parse_duration("20m") == 1200
    assert parse_duration("1h30m") == 5400
    assert parse_duration("90") == 90
    with pytest.raises(UsageError, match="duration"):
        parse_duration("twenty minutes")
    assert parse_freeze("backbone:2,none") == [("backbone", 2), ("none", None)]
    with pytest.raises(UsageError, match="needs :EPOCHS"):
        parse_freeze("backbone,none")
    with pytest.raises(UsageError, match="expected one of"):
        parse_freeze("layers")


@pytest.mark.slow
def test_losses_fall_and_run_dir_is_a_model(tiny_shapes, tmp_path):
    from masklab import Segmenter

    run = tmp_path / "run"
    cfg = TrainConfig(data=str(tiny_shapes / "train"), val=str(tiny_shapes / "val"), out=str(run), epochs=6,
                      augment=False, lr=3e-3, **TINY)
    result = train(cfg, progress=False)
    rows = read_metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert result.step == 6
    losses = [r["loss"] for r in rows]
    assert np.mean(losses[-2:]) < 0.8 * np.mean(losses[:2]), losses
    assert all(r["mask_ap"] is not None for r in rows)  # evaluated every epoch with the COCO evaluator
    card = json.loads((run / "model.json").read_text())
    assert card["categories"] == ["__background__", "square", "circle", "triangle"]
    assert (card["min_size"], card["max_size"]) == (64, 64)
    assert card["format"] == "masklab-model-card/2"
    assert (run / card["weights"]["file"]).is_file() and card["weights"]["storage"] == "float32"
    assert card["metrics"]["dataset"] == str(tiny_shapes / "val") and card["metrics"]["mask_ap"] is not None
    assert card["trained"]["epochs"] == 6 and card["trained"]["steps"] == 6 and card["base_model"] == "small"
    png = (run / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    # A run directory is a model: the card gives classes and preprocessing, the weights load.
    seg = Segmenter(str(run), device="cpu", score_thresh=0.0)
    assert seg.spec.categories == tuple(card["categories"])
    assert seg.loaded.module.transform.min_size == (64,)
    best, _ = load_checkpoint(run, "best")
    for k, v in seg.loaded.module.state_dict().items():
        assert torch.equal(v, best[k]), k
    # A packaged copy (fp16 storage + card next to it) loads back into an fp32 module.
    from masklab.training import package_model

    packed = package_model(run, tmp_path / "pack" / "tiny.safetensors", command="masklab train --package ...")
    packed_card = json.loads(packed.with_suffix(".json").read_text())
    assert packed_card["weights"] == {"file": "tiny.safetensors", "storage": "float16"}
    assert packed_card["packaged_with"] == "masklab train --package ..." and packed_card["metrics"] == card["metrics"]
    seg16 = Segmenter(str(packed), device="cpu")
    assert seg16.spec.categories == tuple(card["categories"])
    for k, v in seg16.loaded.module.state_dict().items():
        if v.is_floating_point():
            assert v.dtype == torch.float32
            torch.testing.assert_close(v, best[k].half().float(), rtol=0, atol=0, msg=k)
    # ... and an existing run is never overwritten by a fresh start.
    with pytest.raises(UsageError, match="--resume"):
        train(cfg, progress=False)


@pytest.mark.slow
def test_resume_continues_exactly(tiny_shapes, tmp_path, monkeypatch):
    import masklab.training.trainer as tr

    base = {"data": str(tiny_shapes / "train"), "val": None, "epochs": 4, **TINY}
    straight = train(TrainConfig(out=str(tmp_path / "a"), **base), progress=False, threads=1)
    assert straight.step == 4
    # The same run, killed when its third epoch starts (after the epoch-2 checkpoint) ...
    real = tr.epoch_batches

    def killed_at_epoch_2(n, *, epoch, **kw):
        if epoch == 2:
            raise KeyboardInterrupt
        return real(n, epoch=epoch, **kw)

    cfg_b = TrainConfig(out=str(tmp_path / "b"), **base)
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(tr, "epoch_batches", killed_at_epoch_2)
        train(cfg_b, progress=False, threads=1)
    _, state2 = load_checkpoint(tmp_path / "b")
    assert (state2["step"], state2["epoch"]) == (2, 2)
    # ... and resumed: it must end exactly where the uninterrupted run ended.
    resumed = train(cfg_b, resume=True, progress=False, threads=1)
    assert resumed.step == 4 and resumed.epoch == 4
    wa, sa = load_checkpoint(tmp_path / "a")
    wb, sb = load_checkpoint(tmp_path / "b")
    assert sa["step"] == sb["step"] == 4
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=1e-5, msg=k)
    oa, ob = sa["optimizer"], sb["optimizer"]
    assert oa["param_groups"] == ob["param_groups"]
    for i in oa["state"]:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(ob["state"][i][name], oa["state"][i][name], rtol=0, atol=1e-5)
    assert [r["step"] for r in read_metrics(tmp_path / "b")] == [1, 2, 3, 4]


def test_resume_errors(tiny_shapes, tmp_path):
    cfg = TrainConfig(data=str(tiny_shapes / "train"), out=str(tmp_path / "nothing"), epochs=1, **TINY)
    with pytest.raises(UsageError, match="no checkpoint"):
        train(cfg, resume=True, progress=False)
    from masklab.training import load_settings

    with pytest.raises(UsageError, match="no such run directory"):
        load_settings(tmp_path / "missing")


def _fake_state(value: float):
    return {"w": torch.full((3, 4), value), "n": torch.tensor(7, dtype=torch.int64)}


def test_checkpoint_crash_mid_save_keeps_previous(tmp_path, monkeypatch):
    import masklab.training.checkpoint as ck

    save_checkpoint(tmp_path, model_state=_fake_state(1.0), state={"optimizer": {"lr": 0.1}, "epoch": 1}, step=10, which=("last", "best"))

    def torn_save(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a checkpoint")  # partial bytes reach the temp file, then the "crash"
        raise OSError("disk full")

    with monkeypatch.context() as m, pytest.raises(OSError, match="disk full"):
        m.setattr(torch, "save", torn_save)
        save_checkpoint(tmp_path, model_state=_fake_state(2.0), state={"optimizer": {"lr": 0.2}, "epoch": 2}, step=20)
    weights, state = load_checkpoint(tmp_path, "last")
    assert state["step"] == 10 and state["optimizer"] == {"lr": 0.1}
    assert torch.equal(weights["w"], torch.full((3, 4), 1.0))
    assert checkpoint_paths(tmp_path, "last").step == 10
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))  # the torn temp file was removed
    # The next save works and the pointer moves; unreferenced files are collected.
    save_checkpoint(tmp_path, model_state=_fake_state(3.0), state={"epoch": 3}, step=30)
    assert checkpoint_paths(tmp_path, "last").step == 30 and checkpoint_paths(tmp_path, "best").step == 10
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*"))
    assert names == ["step-0000010.safetensors", "step-0000010.state.pt", "step-0000030.safetensors", "step-0000030.state.pt"]
    assert ck.load_checkpoint(tmp_path, "best")[1]["step"] == 10


def test_checkpoint_crash_between_files_keeps_pair(tmp_path, monkeypatch):
    import masklab.training.checkpoint as ck

    save_checkpoint(tmp_path, model_state=_fake_state(1.0), state={"epoch": 1}, step=1)

    def crash(path, obj):
        raise KeyboardInterrupt  # killed after the weights file, before the state file

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(ck, "_write_torch", crash)
        save_checkpoint(tmp_path, model_state=_fake_state(2.0), state={"epoch": 2}, step=2)
    weights, state = load_checkpoint(tmp_path)
    assert state["step"] == 1 and torch.equal(weights["w"], torch.full((3, 4), 1.0))


def test_rng_state_round_trip():
    import random

    from masklab.training.checkpoint import rng_state, set_rng_state

    s = rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    buf = __import__("io").BytesIO()
    torch.save(s, buf)
    buf.seek(0)
    set_rng_state(torch.load(buf, weights_only=True))  # plain types and tensors only
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_coco_init_needs_published_weights(tiny_shapes, tmp_path):
    cfg = TrainConfig(data=str(tiny_shapes / "train"), out=str(tmp_path / "r"), epochs=1, **{**TINY, "init": "coco"})
    with pytest.raises(UsageError, match="no published COCO weights"):
        train(cfg, progress=False)


def test_coco_init_replaces_class_heads(monkeypatch, tmp_path, v2_weights):
    """--init coco keeps every COCO tensor except the class-specific predictors (fake 'published' file)."""
    import dataclasses

    import masklab.training.model as tm
    from masklab.training.model import build_model, init_weights, train_spec

    monkeypatch.setattr(tm, "ensure_weights", lambda spec, **k: v2_weights)
    cfg = TrainConfig(data="x", out=str(tmp_path / "r"), epochs=1, init="coco", model="maskrcnn_resnet50_fpn_v2")
    spec = dataclasses.replace(train_spec(cfg, ("a", "b")), min_size=64, max_size=64)
    module = build_model(spec)
    note = init_weights(module, cfg, spec)
    assert "heads replaced" in note
    coco = torch.load(v2_weights, weights_only=True)
    sd = module.state_dict()
    assert torch.equal(sd["backbone.body.layer1.0.conv1.weight"], coco["backbone.body.layer1.0.conv1.weight"])
    assert torch.equal(sd["roi_heads.mask_head.0.0.weight"], coco["roi_heads.mask_head.0.0.weight"])
    assert sd["roi_heads.box_predictor.cls_score.weight"].shape[0] == 3  # background + a + b
    assert sd["roi_heads.mask_predictor.mask_fcn_logits.weight"].shape[0] == 3


@pytest.mark.slow
def test_demo_falls_back_to_the_shipped_shapes_model(tmp_path, capsys, monkeypatch):
    """`make demo` offline with an empty cache: the shipped demo model runs end to end. A cache of its
    own: the demo prepares the demo model's fast path, which other tests' eager comparisons must not find."""
    monkeypatch.setenv("MASKLAB_HOME", str(tmp_path / "home"))
    from masklab.data.shapes import SHAPE_CLASSES
    from masklab.demo import DEMO_MODEL, main

    card = json.loads(DEMO_MODEL.with_suffix(".json").read_text())
    assert DEMO_MODEL.stat().st_size <= 8 * 1024 * 1024
    assert card["arch"] == "maskrcnn_mobilenet_v3_fpn" and "masklab train" in card["trained"]["command"]
    out = tmp_path / "demo"
    assert main(["--out", str(out)]) == 0
    first = capsys.readouterr()
    assert "COCO weights unavailable" in first.err and "offline demo model" in first.err
    assert main(["--out", str(out)]) == 0  # a second `make demo` into the same folder: the same table
    table = capsys.readouterr().out
    assert "failed" not in table and table.splitlines()[:4] == first.out.splitlines()[:4]
    records = sorted(out.glob("shapes_*.json"))
    assert len(records) == 3 and len(list(out.glob("shapes_*.png"))) == 3
    found = [i for r in records for i in json.loads(r.read_text())["instances"]]
    assert found and {i["label"] for i in found} <= set(SHAPE_CLASSES)
    # each overlay differs from its scene exactly when something was found in it
    from PIL import Image

    for r in records:
        scene = np.asarray(Image.open(out / "scenes" / r.with_suffix(".png").name).convert("RGB"))
        overlay = np.asarray(Image.open(r.with_suffix(".png")).convert("RGB"))
        assert overlay.shape == scene.shape
        assert (overlay != scene).any() == bool(json.loads(r.read_text())["instances"])


@pytest.mark.parametrize(
    "mode, trains, frozen",
    [
        ("none", ["backbone.body.0.0.weight", "roi_heads.box_head.3.weight"], []),
        ("backbone", ["backbone.fpn.inner_blocks.0.0.weight", "rpn.head.conv.0.0.weight", "roi_heads.mask_head.0.0.weight"],
         ["backbone.body.0.0.weight", "backbone.body.13.block.0.0.weight"]),
        ("heads", ["roi_heads.box_predictor.cls_score.weight", "roi_heads.mask_predictor.mask_fcn_logits.weight"],
         ["backbone.body.0.0.weight", "backbone.fpn.inner_blocks.0.0.weight", "roi_heads.box_head.3.weight"]),
    ],
)
def test_freeze_modes(mode, trains, frozen):
    import dataclasses

    from masklab.models.zoo import get_spec
    from masklab.training.model import apply_freeze, build_model

    module = build_model(dataclasses.replace(get_spec("small"), categories=("__background__", "a")))
    module.train()
    # Start from another mode, so that each one must change what it lists (a fresh module trains everything:
    # "none" on it would pass doing nothing).
    apply_freeze(module, "none" if mode == "heads" else "heads")
    apply_freeze(module, mode)
    params = dict(module.named_parameters())
    assert all(params[k].requires_grad for k in trains)
    assert not any(params[k].requires_grad for k in frozen)
    assert all(p.requires_grad for p in params.values()) == (mode == "none")  # only "none" trains all
    bn = module.backbone.body["0"][1]  # the stem's BatchNorm: statistics frozen with the trunk
    assert bn.training == (mode == "none")


def test_trained_card_round_trip_and_old_cards(tmp_path):
    """model.json is a masklab-model-card/2 ModelCard; a run folder from before (card /1) still gives its
    score back on --resume, and packages as a /2 card with the same weights and score."""
    from safetensors.torch import save_file

    from masklab.models.card import ModelCard
    from masklab.models.zoo import get_spec
    from masklab.training.model import train_spec
    from masklab.training.run_dir import card_metrics, package_model, trained_card, write_card

    cfg = TrainConfig(data="d/train", val="d/val", out=str(tmp_path / "run"), model="small", epochs=1, command="masklab train ...")
    spec = train_spec(cfg, ("a", "b"))
    score = {"box_ap": 0.5, "box_ap50": 0.75, "mask_ap": 0.25, "mask_ap50": None}
    card = trained_card(cfg, spec, "checkpoints/step-0000003.safetensors", score, step=3, epoch=1)
    run = tmp_path / "run"
    run.mkdir()
    write_card(run, card)
    doc = json.loads((run / "model.json").read_text())
    assert doc["format"] == "masklab-model-card/2" and doc["categories"] == ["__background__", "a", "b"]
    assert doc["score_thresh"] == get_spec("small").score_thresh
    back = ModelCard.from_json(doc)
    assert back == card and back.metrics == {"dataset": "d/val", **score}
    assert back.trained == {"data": "d/train", "init": "coco", "epochs": 1, "steps": 3, "command": "masklab train ..."}
    assert card_metrics(run) == score
    # A run written before card /2: its score comes back, and it packages.
    old = tmp_path / "old"
    (old / "checkpoints").mkdir(parents=True)
    save_file({"w": torch.ones(2, 2)}, str(old / "checkpoints" / "step-0000002.safetensors"))
    (old / "model.json").write_text(json.dumps({
        "format": "masklab-model-card/1", "name": "old", "arch": spec.arch, "categories": ["__background__", "a"],
        "num_classes": 2, "min_size": 64, "max_size": 64, "weights": "checkpoints/step-0000002.safetensors",
        "score": {"dataset": "v", "mask_ap": 0.125}, "trained": {"data": "t", "init": "scratch", "epochs": 2, "steps": 2, "command": ""},
    }))
    assert card_metrics(old) == {"mask_ap": 0.125}
    packed = package_model(old, tmp_path / "pack" / "old.safetensors", fp16=False)
    pdoc = json.loads(packed.with_suffix(".json").read_text())
    assert pdoc["format"] == "masklab-model-card/2" and pdoc["weights"] == {"file": "old.safetensors", "storage": "float32"}
    assert pdoc["metrics"] == {"dataset": "v", "mask_ap": 0.125} and pdoc["min_size"] == 64
    without_score = trained_card(cfg, spec, "x.safetensors", None, step=1, epoch=1)
    write_card(run, without_score)
    assert card_metrics(run) is None
