"""The web service: API results equal the CLI's, and every limit holds (FastAPI test client, no sockets).

The real model (seeded random ``small`` weights, small input sizes) everywhere except the concurrency
and deadline tests, which use a fake segmenter that blocks on an Event, so "slow" is deterministic.
"""

from __future__ import annotations

import dataclasses
import io
import json
import struct
import threading
import time
import tracemalloc
import zlib

import numpy as np
import pytest

pytest.importorskip("fastapi")
from conftest import make_scene  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from masklab.serve import ServeSettings, create_app  # noqa: E402
from masklab.settings import LOW_SCORE_THRESH, InferenceSettings  # noqa: E402
from masklab.structures.instances import Instances  # noqa: E402

SIZES = {"min_size": 128, "max_size": 192}  # smaller than conftest.SMALL: many forward passes here
MAX_BODY = 300_000
MAX_PIXELS = 1_000_000


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _wait_ready(client: TestClient, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").json()
        time.sleep(0.05)


@pytest.fixture(scope="module")
def settings(small_weights):
    return ServeSettings(
        inference=InferenceSettings(model=str(small_weights), device="cpu", score_thresh=0.0, **SIZES),
        max_body_bytes=MAX_BODY,
        max_pixels=MAX_PIXELS,
    )


@pytest.fixture(scope="module")
def client(settings):
    with TestClient(create_app(settings)) as c:
        _wait_ready(c)
        yield c


@pytest.fixture(scope="module")
def scene_png():
    return _png(make_scene(180, 240, seed=5))


# -- results -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_segment_json_equals_the_cli_json(client, scene_png, small_weights, tmp_path):
    from masklab.cli import main

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "scene.png").write_bytes(scene_png)
    argv = ["segment", str(tmp_path / "in" / "scene.png"), "--out", str(tmp_path / "out"), "--model", str(small_weights)]
    argv += ["--device", "cpu", "--score-thresh", "0", "--min-size", "128", "--max-size", "192", "--viz", "none", "--no-progress"]
    assert main(argv) == 0
    cli = json.loads((tmp_path / "out" / "scene.json").read_text())

    r = client.post("/v1/segment?score_thresh=0", files={"file": ("scene.png", scene_png, "image/png")})
    assert r.status_code == 200, r.text
    api = r.json()
    assert len(api["instances"]) > 0
    assert api["image"] == "scene.png"  # the CLI records the path it was given; the API the upload's name
    assert {k: v for k, v in api.items() if k != "image"} == {k: v for k, v in cli.items() if k != "image"}


def test_raw_body_multipart_and_options(client, settings, scene_png):
    multi = client.post("/v1/segment?score_thresh=0", files={"file": ("a.png", scene_png, "image/png")}).json()
    # A wrong but image/* content type is fine: the bytes decide.
    raw = client.post("/v1/segment?score_thresh=0", content=scene_png, headers={"content-type": "image/jpeg"})
    assert raw.status_code == 200, raw.text
    assert raw.json()["instances"] == multi["instances"] and raw.json()["image"] == "upload"

    scores = sorted({d["score"] for d in multi["instances"]})  # rounded to 6 decimals in the JSON
    cut = (scores[len(scores) // 2] + scores[len(scores) // 2 - 1]) / 2  # between two scores, away from rounding
    high = client.post(f"/v1/segment?score_thresh={cut}", content=scene_png, headers={"content-type": "image/png"}).json()
    assert [d["score"] for d in high["instances"]] == [d["score"] for d in multi["instances"] if d["score"] >= cut]

    # The class filter needs an answer with two classes: this random model's 100 best detections are all
    # class_2 here; its 200 best add class_3.
    wide = dataclasses.replace(settings, inference=settings.inference.replace(max_detections=200))
    with TestClient(create_app(wide)) as c:
        _wait_ready(c)
        every = c.post("/v1/segment?score_thresh=0", content=scene_png, headers={"content-type": "image/png"}).json()
        label = every["instances"][-1]["label"]
        assert label != every["instances"][0]["label"]  # two classes, and the one asked for is not the top one
        only = c.post(f"/v1/segment?score_thresh=0&classes={label}", content=scene_png, headers={"content-type": "image/png"}).json()
    assert only["instances"] and {d["label"] for d in only["instances"]} == {label}
    assert len(only["instances"]) == sum(d["label"] == label for d in every["instances"])
    assert [d["score"] for d in only["instances"]] == [d["score"] for d in every["instances"] if d["label"] == label]

    bad = client.post("/v1/segment?classes=zebra", content=scene_png, headers={"content-type": "image/png"})
    assert bad.status_code == 422 and "zebra" in bad.json()["detail"]

    coco = client.post("/v1/segment?score_thresh=0&formats=json&formats=coco", content=scene_png, headers={"content-type": "image/png"}).json()
    assert [e["segmentation"] for e in coco["coco"]] == [d["rle"] for d in multi["instances"]]
    assert [e["score"] for e in coco["coco"]] == pytest.approx([d["score"] for d in multi["instances"]], abs=1e-6)


def test_render_styles_and_hide(client, scene_png):
    from PIL import Image

    from masklab.visualize import STYLES

    scene = np.asarray(Image.open(io.BytesIO(scene_png)).convert("RGB"))
    n = len(client.post("/v1/segment?score_thresh=0", content=scene_png, headers={"content-type": "image/png"}).json()["instances"])
    images = {}
    for style in STYLES:
        r = client.post(f"/v1/render?style={style}&score_thresh=0", content=scene_png, headers={"content-type": "image/png"})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
        images[style] = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))
        assert images[style].shape == scene.shape
        assert (images[style] != scene).any(), style
    all_ids = ",".join(str(i) for i in range(n))
    r = client.post(f"/v1/render?style=instance&score_thresh=0&hide={all_ids}", content=scene_png, headers={"content-type": "image/png"})
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB")), scene)  # nothing left to draw
    r = client.post("/v1/render?style=instance&score_thresh=0&hide=0", content=scene_png, headers={"content-type": "image/png"})
    assert not np.array_equal(np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB")), images["instance"])
    assert client.post("/v1/render?style=cubist", content=scene_png, headers={"content-type": "image/png"}).status_code == 422
    assert client.post("/v1/render?hide=../x", content=scene_png, headers={"content-type": "image/png"}).status_code == 422


def test_models_health_docs(client):
    from masklab.visualize import STYLES

    card = client.get("/v1/models").json()
    assert card["model"]["name"] == "small_random" and card["classes"] == ["class_1", "class_2", "class_3"]
    assert card["styles"] == list(STYLES)
    assert card["min_score"] == 0.0  # the server's floor, as configured (0.0 is kept, not taken for "unset")
    assert card["limits"]["max_body_bytes"] == MAX_BODY and card["limits"]["max_pixels"] == MAX_PIXELS
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "model": "small_random"}
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/segment", "/v1/render", "/v1/models", "/healthz", "/readyz", "/metrics"} <= set(paths)
    assert "multipart/form-data" in paths["/v1/segment"]["post"]["requestBody"]["content"]
    page = client.get("/")
    assert page.status_code == 200 and 'id="file"' in page.text and "Content-Security-Policy" in page.headers
    assert client.get("/static/app.js").status_code == 200


def test_every_inference_setting_reaches_the_model(client, settings, scene_png):
    """The server's model runs ``settings.inference`` as given: here ``max_detections`` (the CLI-equality
    test covers the input size and the score floor)."""
    everything = client.post("/v1/segment?score_thresh=0", content=scene_png, headers={"content-type": "image/png"}).json()
    assert len(everything["instances"]) > 2
    capped = dataclasses.replace(settings, inference=settings.inference.replace(max_detections=2))
    with TestClient(create_app(capped)) as c:
        _wait_ready(c)
        r = c.post("/v1/segment?score_thresh=0", content=scene_png, headers={"content-type": "image/png"})
        assert r.status_code == 200, r.text
        few = r.json()["instances"]
        assert len(few) == 2
        assert c.get("/v1/models").json()["min_score"] == 0.0
    # the cap keeps the best-scoring detections after NMS: the first two of the uncapped answer
    assert few == everything["instances"][:2]


def test_the_server_sets_torch_threads_at_start_up(settings):
    """The Segmenter leaves torch's threads alone; the server's model builder sets them (every CPU)."""
    import torch

    from masklab.inference.threads import available_cpus
    from masklab.serve.service import build_segmenter

    if available_cpus() == 1:
        pytest.skip("one CPU: the server's setting equals torch's single thread")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        seg = build_segmenter(settings.inference)
        assert torch.get_num_threads() == available_cpus()
        torch.set_num_threads(2)
        build_segmenter(settings.inference.replace(threads=1))  # an explicit count wins
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert seg.inference.score_thresh == 0.0 and seg.inference.min_size == SIZES["min_size"]


# -- limits --------------------------------------------------------------------------------------------
def test_oversized_body_with_content_length_is_413(client):
    big = b"\x89PNG" + b"\0" * (MAX_BODY + 10)
    r = client.post("/v1/segment", content=big, headers={"content-type": "image/png"})
    assert r.status_code == 413 and str(MAX_BODY) in r.json()["detail"]
    r = client.post("/v1/segment", files={"file": ("big.png", big, "image/png")})
    assert r.status_code == 413


def test_oversized_body_without_content_length_is_413(client):
    def chunks():  # a generator body goes out chunked (Transfer-Encoding), with no Content-Length to trust
        for _ in range(40):
            yield b"\0" * 16_384

    before = _metric(client, 'masklab_rejections_total{reason="too_large"}')
    r = client.post("/v1/segment", content=chunks(), headers={"content-type": "image/png"})
    assert r.status_code == 413 and "larger than the limit" in r.json()["detail"]
    assert _metric(client, 'masklab_rejections_total{reason="too_large"}') == before + 1


def test_body_limit_stops_pulling_the_stream_at_the_limit():
    """The middleware alone, on a hand-driven ASGI stream: no Content-Length, endless 300-byte chunks."""
    import asyncio

    from starlette.requests import Request

    from masklab.serve.limits import BodySizeLimit

    async def app(scope, receive, send):
        await Request(scope, receive).body()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"read it all"})

    pulled, sent = [], []

    async def receive():
        pulled.append(300)
        return {"type": "http.request", "body": b"\0" * 300, "more_body": True}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [(b"content-type", b"image/png")]}
    asyncio.run(BodySizeLimit(app, max_bytes=1000)(scope, receive, send))
    assert sent[0]["status"] == 413 and b"1000 bytes" in sent[1]["body"]
    assert sum(pulled) == 1200  # the fourth chunk crossed the limit; nothing after it was read


@pytest.mark.parametrize(
    ("body", "ctype", "status", "words"),
    [
        (b"just some text, not an image", "image/png", 415, "header is not trusted"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "image/png", 415, "not"),
        (b"GIF89a" + b"\0" * 10, "image/gif", 422, "corrupt"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml", 415, ""),
        (b"{}", "application/json", 415, "multipart/form-data"),
        (b"", "image/png", 422, "empty"),
    ],
)
def test_non_images_are_refused_with_a_clear_message(client, body, ctype, status, words):
    r = client.post("/v1/segment", content=body, headers={"content-type": ctype})
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]


def test_non_allowlisted_format_is_415(client):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(make_scene(64, 64)).save(buf, format="ICO")  # a real image, but not on the allowlist
    r = client.post("/v1/segment", files={"file": ("icon.png", buf.getvalue(), "image/png")})
    assert r.status_code == 415 and "allowed" in r.json()["detail"]


def test_truncated_image_and_missing_field_are_422(client, scene_png):
    r = client.post("/v1/segment", content=scene_png[: len(scene_png) // 2], headers={"content-type": "image/png"})
    assert r.status_code == 422 and r.json()["detail"]
    r = client.post("/v1/segment", files={"image": ("a.png", scene_png, "image/png")})
    assert r.status_code == 422 and "'file'" in r.json()["detail"]


def _png_bomb(w: int, h: int) -> bytes:
    """A valid 1-bit PNG of w x h zero pixels: a few KB that decode to w*h*3 bytes of RGB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = zlib.compressobj(9)
    row = b"\0" * (1 + (w + 7) // 8)
    idat = b"".join(rows.compress(row) for _ in range(h)) + rows.flush()
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [4000, 20000])  # over --max-pixels; and over Pillow's own bomb limit
def test_bomb_is_refused_before_decoding(client, monkeypatch, side):
    from PIL import ImageFile

    bomb = _png_bomb(side, side)
    assert len(bomb) < MAX_BODY
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size))
    tracemalloc.start()
    try:
        r = client.post("/v1/segment", files={"file": ("bomb.png", bomb, "image/png")})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.status_code == 413, r.text
    assert "pixels" in r.json()["detail"] and str(MAX_PIXELS) in r.json()["detail"]
    assert decoded == []  # refused on the header: no pixel was decoded
    assert peak < 20 * 2**20  # the RGB image would be side*side*3 bytes (48 MB .. 1.2 GB)


def test_upload_name_never_touches_the_file_system(client, scene_png, tmp_path, monkeypatch):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    for name in ("../../x", "..\\..\\x", "/tmp/../x"):
        r = client.post("/v1/segment", files={"file": (name, scene_png, "image/png")})
        assert r.status_code == 200, r.text
        assert r.json()["image"] == "x"
    assert [p for p in tmp_path.rglob("*") if p.name == "x"] == []
    assert list(work.iterdir()) == []


# -- readiness, concurrency, deadline -----------------------------------------------------------------
class _GatedSegmenter:
    """Fake model: warm-up returns at once; every later call blocks until ``gate`` is set."""

    def __init__(self, gate: threading.Event) -> None:
        from masklab.models.zoo import get_spec

        self.spec = dataclasses.replace(get_spec("small"), name="gated", categories=("__background__", "thing"))
        self.gate, self.calls, self._lock = gate, 0, threading.Lock()

    def predict(self, images):
        with self._lock:
            self.calls += 1
            first = self.calls == 1
        if not first:
            assert self.gate.wait(timeout=60), "test never opened the gate"
        return [Instances.empty(im.shape[:2]) for im in images]


def _metric(client: TestClient, series: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def test_readyz_is_503_until_the_model_is_loaded():
    gate = threading.Event()

    def factory():
        assert gate.wait(timeout=60)
        return _GatedSegmenter(threading.Event())

    with TestClient(create_app(ServeSettings(), segmenter_factory=factory)) as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        r = c.post("/v1/segment", content=_png(make_scene(64, 64)), headers={"content-type": "image/png"})
        assert r.status_code == 503 and r.headers["retry-after"]
        gate.set()
        _wait_ready(c, timeout=30)


def test_readyz_reports_a_failed_load():
    def factory():
        raise RuntimeError("weights file is corrupt")

    with TestClient(create_app(ServeSettings(), segmenter_factory=factory)) as c:
        deadline = time.monotonic() + 30
        while c.get("/readyz").json()["status"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        r = c.get("/readyz")
        assert r.status_code == 503 and "weights file is corrupt" in r.json()["detail"]


@pytest.mark.parametrize(("workers", "queue", "extra"), [(1, 0, 2), (2, 1, 3)])
def test_overflow_gets_503_while_healthz_answers(workers, queue, extra):
    gate = threading.Event()
    seg = _GatedSegmenter(gate)
    settings = ServeSettings(workers=workers, queue_size=queue, request_timeout_s=60, cache_bytes=0)
    png = _png(make_scene(64, 64))
    results: list = []

    with TestClient(create_app(settings, segmenter_factory=lambda: seg)) as c:
        _wait_ready(c)

        def call():
            r = c.post("/v1/segment", content=png, headers={"content-type": "image/png"})
            results.append((r.status_code, r.headers.get("retry-after"), r.json()))

        threads = [threading.Thread(target=call) for _ in range(workers + queue + extra)]
        try:
            for t in threads:
                t.start()
            deadline = time.monotonic() + 30
            # Everything admitted is running or queued; the overflow has already been answered.
            while not (len(results) == extra and seg.calls - 1 == workers and _metric(c, "masklab_queue_depth") == queue):
                assert time.monotonic() < deadline, (results, seg.calls)
                time.sleep(0.02)
            assert c.get("/healthz").status_code == 200  # the event loop is free while the workers are blocked
            assert c.get("/readyz").status_code == 200
            assert _metric(c, "masklab_running") == workers
            assert [s for s, _, _ in results] == [503] * extra
            assert all(int(ra) > 0 for _, ra, _ in results)
            assert "busy" in results[0][2]["detail"]
        finally:
            gate.set()
            for t in threads:
                t.join(timeout=60)
        assert sorted(s for s, _, _ in results) == [200] * (workers + queue) + [503] * extra
        assert seg.calls - 1 == workers + queue  # the refused requests never reached the model
        assert _metric(c, 'masklab_rejections_total{reason="busy"}') == extra
        assert _metric(c, 'masklab_requests_total{path="/v1/segment",status="503"}') == extra


def test_request_deadline_gives_504():
    gate = threading.Event()
    seg = _GatedSegmenter(gate)
    settings = ServeSettings(workers=1, queue_size=1, request_timeout_s=0.5, cache_bytes=0)
    png = _png(make_scene(64, 64))
    with TestClient(create_app(settings, segmenter_factory=lambda: seg)) as c:
        _wait_ready(c)
        try:
            r = c.post("/v1/segment", content=png, headers={"content-type": "image/png"})
            assert r.status_code == 504 and "deadline" in r.json()["detail"]
            # The worker is still stuck in the model: the next request times out waiting for it.
            r = c.post("/v1/segment", content=png, headers={"content-type": "image/png"})
            assert r.status_code == 504 and "waiting for a worker" in r.json()["detail"]
        finally:
            gate.set()
        assert _metric(c, 'masklab_rejections_total{reason="deadline"}') == 2
        deadline = time.monotonic() + 10
        while _metric(c, "masklab_running") > 0:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert c.post("/v1/segment", content=png, headers={"content-type": "image/png"}).status_code == 200


def test_metrics_count_requests_by_status_and_latency(client, scene_png):
    before = _metric(client, 'masklab_requests_total{path="/v1/segment",status="200"}')
    client.post("/v1/segment", content=scene_png, headers={"content-type": "image/png"})
    client.get("/no/such/path")
    text = client.get("/metrics").text
    assert _metric(client, 'masklab_requests_total{path="/v1/segment",status="200"}') == before + 1
    assert 'masklab_requests_total{path="other",status="404"}' in text  # unknown paths folded into one label
    assert 'masklab_request_duration_seconds_bucket{le="+Inf",path="/v1/segment"}' in text
    assert "masklab_queue_depth 0.0" in text


def test_slow_upload_hits_the_deadline():
    """A client trickling its body cannot hold a slot: the deadline covers the upload too."""
    import anyio

    open_gate = threading.Event()
    open_gate.set()  # the model answers at once here; only the upload is slow
    seg = _GatedSegmenter(open_gate)
    app = create_app(ServeSettings(request_timeout_s=1.0, queue_size=0), segmenter_factory=lambda: seg)
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/v1/segment", "raw_path": b"/v1/segment", "root_path": "", "query_string": b"",
        "headers": [(b"host", b"testserver"), (b"content-type", b"image/png")],
        "client": ("127.0.0.1", 5000), "server": ("testserver", 80),
    }  # fmt: skip

    async def trickle():
        sent = []

        async def receive():
            await anyio.sleep(0.2)
            return {"type": "http.request", "body": b"\x89PNG", "more_body": True}

        async def send(message):
            sent.append(message)

        await app(dict(scope), receive, send)
        return sent

    with TestClient(app) as c:
        _wait_ready(c)
        sent = c.portal.call(trickle)
        assert sent[0]["status"] == 504 and b"receiving the upload" in sent[1]["body"]
        # The slot is free again: with one worker and no queue, a normal request is admitted.
        assert c.post("/v1/segment", content=_png(make_scene(64, 64)), headers={"content-type": "image/png"}).status_code == 200
    assert seg.calls == 2  # warm-up + the normal request; the trickled body never reached the model


def test_page_needs_nothing_from_the_internet():
    from importlib import resources

    static = resources.files("masklab.serve") / "static"
    for name in ("index.html", "app.js", "style.css"):
        text = (static / name).read_text(encoding="utf-8")
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, name
    html = (static / "index.html").read_text(encoding="utf-8")
    # Every form control has a label (accessibility).
    for control in ("file", "score", "style"):
        assert f'for="{control}"' in html


# -- settings and the command line ---------------------------------------------------------------------
def test_serve_settings_embed_the_inference_settings_and_default_the_floor_once():
    assert ServeSettings().inference.score_thresh == LOW_SCORE_THRESH  # not given: the server's floor
    assert ServeSettings().score_floor == LOW_SCORE_THRESH
    kept = ServeSettings(inference=InferenceSettings(score_thresh=0.0, max_detections=7), workers=3)
    assert kept.score_floor == 0.0 and kept.inference.max_detections == 7 and kept.workers == 3
    assert kept.inference == InferenceSettings(score_thresh=0.0, max_detections=7)  # nothing else changed
    model_fields = {"model", "weights", "device", "min_score", "min_size", "max_size", "max_detections"}
    assert model_fields.isdisjoint(f.name for f in dataclasses.fields(ServeSettings))
    from masklab.errors import UsageError

    with pytest.raises(UsageError, match="score_thresh must be in"):
        InferenceSettings(score_thresh=1.5)
    with pytest.raises(UsageError, match="workers must be at least 1"):
        ServeSettings(workers=0)
    with pytest.raises(UsageError, match="inference must be an InferenceSettings"):
        ServeSettings(inference={"model": "small"})


def test_cli_builds_the_settings_and_keeps_min_score_as_an_alias(small_weights, monkeypatch, capsys):
    import masklab.serve
    import masklab.serve.connections
    from masklab.cli import main

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--score-thresh S minimum score, 0..1 (default: 0.05)" in help_text and "--min-score" not in help_text
    assert "--classes" not in help_text  # classes are chosen per request

    built = []
    monkeypatch.setattr(masklab.serve, "create_app", lambda settings: built.append(settings) or "app")
    monkeypatch.setattr(masklab.serve.connections, "run_server", lambda app, **kw: built.append((app, kw["port"])))
    common = ["serve", "--model", str(small_weights), "--device", "cpu", "--min-size", "128", "--port", "8123"]
    assert main(common + ["--min-score", "0.2", "--workers", "2", "--cache-mb", "1"]) == 0
    assert "--min-score is deprecated" in capsys.readouterr().err
    assert main(common + ["--score-thresh", "0.3", "--nms-thresh", "0.4"]) == 0
    assert main(common) == 0
    first, second, third = built[0], built[2], built[4]
    assert first == ServeSettings(
        inference=InferenceSettings(model=str(small_weights), device="cpu", score_thresh=0.2, min_size=128),
        workers=2,
        cache_bytes=2**20,
    )
    assert built[1] == ("app", 8123)
    assert second.inference == InferenceSettings(model=str(small_weights), device="cpu", score_thresh=0.3, nms_thresh=0.4, min_size=128)
    assert third.score_floor == LOW_SCORE_THRESH
    # a bad model fails before the server starts, not later through /readyz
    assert main(["serve", "--model", "no_such_model"]) != 0
    assert main(["serve", "--model", str(small_weights), "--weights", str(small_weights)]) != 0
    assert len(built) == 6 and "unknown model 'no_such_model'" in capsys.readouterr().err
