"""Weights: offline errors, verified atomic downloads from a local server, safe loading, mismatches."""

import dataclasses
import hashlib
import http.server
import subprocess
import sys
import threading

import pytest
import torch

from masklab.errors import WeightsMismatchError, WeightsUnavailableError
from masklab.models import weights as W
from masklab.models.zoo import MODELS, WeightsSpec


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "masklab", *args], capture_output=True, text=True, timeout=300, env=env)


def test_offline_without_cache_gives_short_clear_error(tmp_path, scene):
    from PIL import Image

    Image.fromarray(scene).save(tmp_path / "a.png")
    proc = _cli("segment", str(tmp_path / "a.png"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 3
    err = proc.stderr.strip().splitlines()
    assert 1 <= len(err) <= 5, proc.stderr
    text = proc.stderr
    spec = MODELS["maskrcnn_resnet50_fpn_v2"].weights
    assert "Traceback" not in text
    assert spec.url in text and spec.sha256 in text and "--weights" in text
    assert str(W.weights_path(spec)) in text


class _Handler(http.server.BaseHTTPRequestHandler):
    payload = b""
    truncate = False

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload[: len(self.payload) // 2] if self.truncate else self.payload)

    def log_message(self, *a):
        pass


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()


def _spec(server, payload, sha=None):
    _Handler.payload = payload
    return WeightsSpec(
        url=f"http://127.0.0.1:{server.server_address[1]}/w.pth",
        sha256=sha or hashlib.sha256(payload).hexdigest(),
        filename="w.pth",
    )


def test_download_verifies_and_is_atomic(server, monkeypatch):
    monkeypatch.delenv("MASKLAB_OFFLINE")
    payload = b"x" * 3_000_000
    _Handler.truncate = False
    path = W.ensure_weights(_spec(server, payload), progress=False)
    assert path.read_bytes() == payload and path.parent == W.cache_dir() / "weights"
    assert not [p for p in path.parent.iterdir() if p.suffix in (".part", ".tmp")]
    path.unlink()
    # Wrong hash: an error, and no file that a later run could take as complete.
    with pytest.raises(WeightsUnavailableError, match="sha256 .* does not match"):
        W.ensure_weights(_spec(server, payload, sha="0" * 64), progress=False)
    assert not path.exists()
    # Connection cut half way: an error, nothing left behind.
    _Handler.truncate = True
    try:
        with pytest.raises(WeightsUnavailableError):
            W.ensure_weights(_spec(server, payload), progress=False)
    finally:
        _Handler.truncate = False
    assert not path.exists()
    assert not [p for p in path.parent.iterdir() if p.suffix in (".part", ".tmp")]


def test_unreachable_url_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("MASKLAB_OFFLINE")
    spec = WeightsSpec(url="http://127.0.0.1:9/none.pth", sha256="a" * 64, filename="none.pth")
    with pytest.raises(WeightsUnavailableError, match="127.0.0.1:9/none.pth") as e:
        W.ensure_weights(spec, progress=False, timeout=2)
    assert len(str(e.value).splitlines()) <= 5


def test_weights_placed_in_cache_by_hand_load_offline(v2_weights, monkeypatch):
    """MASKLAB_OFFLINE=1 (set for every test) proves no download is attempted."""
    from masklab import Segmenter

    spec = MODELS["maskrcnn_resnet50_fpn_v2"]
    digest = W.sha256_file(v2_weights)
    wspec = dataclasses.replace(spec.weights, sha256=digest, filename="hand_placed.pth")
    monkeypatch.setitem(MODELS, spec.name, dataclasses.replace(spec, weights=wspec))
    target = W.weights_path(wspec)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(v2_weights.read_bytes())
    seg = Segmenter(spec.name, device="cpu", min_size=128, max_size=128)
    assert seg.loaded.weights_source == str(target)
    # A corrupted cached file is refused, not silently used.
    with open(target, "r+b") as f:
        f.seek(1000)
        f.write(b"corrupt!")
    with pytest.raises(WeightsUnavailableError, match="corrupt"):
        Segmenter(spec.name, device="cpu")


def test_mismatched_weights_name_the_keys(v2_weights, tmp_path, scene):
    from masklab import Segmenter

    with pytest.raises(WeightsMismatchError, match=r"missing \(\d+\): backbone.fpn") as e:
        Segmenter("maskrcnn_resnet50_fpn", weights=v2_weights)
    assert "file holds maskrcnn_resnet50_fpn_v2 weights" in str(e.value)
    assert len(str(e.value).splitlines()) <= 5
    # A state dict with a changed head shape names key and both shapes.
    state = torch.load(v2_weights, weights_only=True)
    state["roi_heads.mask_predictor.mask_fcn_logits.weight"] = torch.zeros(5, 256, 1, 1)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(WeightsMismatchError, match=r"mask_fcn_logits.weight: file \(5, 256, 1, 1\) vs model \(91, 256, 1, 1\)"):
        Segmenter("maskrcnn_resnet50_fpn_v2", weights=bad)
    from PIL import Image

    Image.fromarray(scene).save(tmp_path / "a.png")
    proc = _cli("segment", str(tmp_path / "a.png"), "--out", str(tmp_path / "o"), "--weights", str(bad))
    assert proc.returncode == 4 and "Traceback" not in proc.stderr and "mask_fcn_logits" in proc.stderr


def test_pickled_code_is_never_executed(tmp_path):
    import pickle

    marker = tmp_path / "pwned"  # an absolute path: the check below looks where the code would write

    class Evil:
        def __reduce__(self):
            return (exec, (f"import pathlib; pathlib.Path({str(marker)!r}).touch()",))

    p = tmp_path / "evil.pth"
    with open(p, "wb") as f:
        pickle.dump({"x": Evil()}, f)
    with pytest.raises(WeightsMismatchError, match="weights_only"):
        W.load_state_dict(p)
    assert not marker.exists()
    pickle.loads(p.read_bytes())  # the check can fail: unpickled without the guard, the payload does run
    assert marker.exists()


def test_safetensors_and_model_as_path(v2_weights, tmp_path):
    from safetensors.torch import save_file

    from masklab import Segmenter

    state = torch.load(v2_weights, weights_only=True)
    st = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(st))
    seg = Segmenter(st, device="cpu")  # architecture and classes recognised from the keys
    assert seg.spec.arch == "torchvision_maskrcnn_v2" and seg.spec.num_classes == 91


def test_entry_without_published_hash_is_checked_by_size(server, monkeypatch):
    monkeypatch.delenv("MASKLAB_OFFLINE")
    payload = b"h5" * 50_000
    spec = dataclasses.replace(_spec(server, payload), sha256="", size_bytes=len(payload))
    assert W.ensure_weights(spec, progress=False).read_bytes() == payload
    W.weights_path(spec).unlink()
    with pytest.raises(WeightsUnavailableError, match="size 100000 bytes does not match the published 99999"):
        W.ensure_weights(dataclasses.replace(spec, size_bytes=len(payload) - 1), progress=False)
    assert not W.weights_path(spec).exists()
