"""Tiling, continued: ``auto`` from the training data a card records, and tiling per web request."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from masklab.inference.tiling import resolve_tile

ASSETS = Path(__file__).resolve().parents[1] / "masklab" / "assets"


def test_auto_tile_follows_the_training_images_when_known():
    # the model input says 128; the training images were 64 px (objects seen at 2x): tiles of 64
    assert resolve_tile("auto", image_hw=(300, 400), min_size=128, max_size=128, native_side=64) == (64, 64)
    assert resolve_tile("auto", image_hw=(60, 64), min_size=128, max_size=128, native_side=64) is None
    assert resolve_tile("auto", image_hw=(300, 400), min_size=128, max_size=128) == (128, 128)


def test_dataset_stats_and_a_card_that_records_them(tmp_path):
    from masklab import Segmenter
    from masklab.data.coco import CocoGroundTruth
    from masklab.data.shapes import write_shapes
    from masklab.data.stats import dataset_stats
    from masklab.models.card import ModelCard

    gt = CocoGroundTruth.load(write_shapes(tmp_path / "set", n=4, size=96, seed=2))
    stats = dataset_stats(gt)
    assert stats["images"] == 4 and stats["image_short_side_px"] == 96 and stats["objects"] > 0
    sizes = stats["object_size_px"]
    assert 0 < sizes["p10"] <= sizes["median"] <= sizes["p90"] < 96
    # a packaged model whose card records its training data: auto tiles at that scale
    shutil.copy(ASSETS / "shapes_small.safetensors", tmp_path / "m.safetensors")
    old = ModelCard.from_json(json.loads((ASSETS / "shapes_small.json").read_text()))
    card = old.replace(weights=dataclasses.replace(old.weights, file="m.safetensors"), data_stats=stats)
    (tmp_path / "m.json").write_text(json.dumps(card.to_json()))
    seg = Segmenter(tmp_path / "m.safetensors", device="cpu", tile="auto")
    assert seg.card.data_stats == stats  # the card's record survives loading
    assert seg.tile_for((300, 400)) == (96, 96) and seg.tile_for((90, 96)) is None
    plain = Segmenter(ASSETS / "shapes_small.safetensors", device="cpu", tile="auto")
    assert plain.tile_for((300, 400)) == (128, 128)  # no record: the model's input size


def test_training_writes_the_data_stats_into_its_card(tmp_path):
    from masklab.data.shapes import write_shapes
    from masklab.models.card import ModelCard
    from masklab.training import TrainConfig, train

    data = write_shapes(tmp_path / "train", n=4, size=64, seed=3).parent
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "run"), model="small", init="scratch", max_steps=2,
                      batch_size=2, min_size=64, max_size=64, device="cpu")
    train(cfg, progress=False)
    card = ModelCard.from_json(json.loads((tmp_path / "run" / "model.json").read_text()))
    assert card.data_stats["images"] == 4 and card.data_stats["image_short_side_px"] == 64
    assert card.data_stats["objects"] > 0


# -- per request in the web service -----------------------------------------------------------------
@pytest.fixture(scope="module")
def client():
    from fastapi.testclient import TestClient

    from masklab.serve import ServeSettings, create_app
    from masklab.settings import InferenceSettings

    settings = ServeSettings(inference=InferenceSettings(model=str(ASSETS / "shapes_small.safetensors"), device="cpu"),
                             max_pixels=4_000_000)
    with TestClient(create_app(settings)) as c:
        deadline = time.monotonic() + 120
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield c


@pytest.fixture(scope="module")
def canvas_png():
    from PIL import Image

    from masklab.data.shapes import large_scene

    scene = large_scene(np.random.default_rng(0), height=384, width=512, n_shapes=14)
    buf = io.BytesIO()
    Image.fromarray(scene.image).save(buf, format="PNG")
    return buf.getvalue(), len(scene.classes)


@pytest.mark.slow
def test_a_request_can_ask_for_tiling(client, canvas_png):
    data, n_shapes = canvas_png
    post = lambda q: client.post(f"/v1/segment{q}", content=data, headers={"content-type": "image/png"})  # noqa: E731
    whole = post("").json()["instances"]
    tiled = post("?tile=128").json()["instances"]
    again = post("").json()["instances"]  # the cache keeps the two apart
    assert n_shapes == 14 and len(tiled) >= 11 > len(whole)  # the demo model sees 128-px-scale shapes only
    assert again == whole
    assert {d["label"] for d in tiled} == {"square", "circle", "triangle"}
    png = client.post("/v1/render?tile=128&style=outline", content=data, headers={"content-type": "image/png"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"


def test_a_bad_tile_request_is_a_clear_422(client, canvas_png):
    data, _ = canvas_png
    for q in ("?tile=huge", "?tile=8", "?tile_overlap=0.95"):
        r = client.post(f"/v1/segment{q}", content=data, headers={"content-type": "image/png"})
        assert r.status_code == 422, (q, r.text)
    r = client.post("/v1/segment?tile=8", content=data, headers={"content-type": "image/png"})
    assert "tile" in r.text
