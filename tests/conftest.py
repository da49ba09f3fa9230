"""Shared test fixtures. No test touches the network: outbound connections except to localhost fail."""

from __future__ import annotations

import socket

import numpy as np
import pytest
from PIL import Image, ImageFile

#: Pillow's own state, taken before any test module imports ultralytics, which changes it process-wide:
#: Image.open becomes a wrapper that tries to install and import pi-heif on every file Pillow cannot
#: identify, and the decompression-bomb limit (MAX_IMAGE_PIXELS) is switched off
_PIL_STATE = (Image.open, Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)

_real_connect = socket.socket.connect


def _guarded_connect(self, address):
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and host not in ("127.0.0.1", "localhost", "::1") and not host.startswith("/"):
        raise OSError(f"tests must not touch the network (tried {address!r})")
    return _real_connect(self, address)


@pytest.fixture(autouse=True)
def _pil_open_unpatched():
    """Every test sees Pillow's own state (see _PIL_STATE): masklab's loaders are tested, not ultralytics'."""
    Image.open, Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = _PIL_STATE
    yield
    Image.open, Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = _PIL_STATE


@pytest.fixture(autouse=True)
def _no_network(monkeypatch, tmp_path_factory):
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    # An empty cache and no downloads unless a test says otherwise.
    monkeypatch.setenv("MASKLAB_HOME", str(tmp_path_factory.getbasetemp() / "masklab-home"))
    monkeypatch.setenv("MASKLAB_OFFLINE", "1")


# Small inputs keep the CPU cost of each forward pass low; the arithmetic is the same code path.
SMALL = {"min_size": 256, "max_size": 384}


@pytest.fixture(scope="session")
def v2_weights(tmp_path_factory):
    """Seeded random weights for maskrcnn_resnet50_fpn_v2, saved as a .pth state dict."""
    import torch

    from masklab.models.loading import build_module
    from masklab.models.zoo import get_spec

    torch.manual_seed(1234)
    module = build_module(get_spec("maskrcnn_resnet50_fpn_v2"))
    path = tmp_path_factory.mktemp("weights") / "v2_random.pth"
    torch.save(module.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def v2_segmenter(v2_weights):
    from masklab import Segmenter

    return Segmenter("maskrcnn_resnet50_fpn_v2", weights=v2_weights, device="cpu", score_thresh=0.0, **SMALL)


def make_scene(h: int = 180, w: int = 240, seed: int = 0) -> np.ndarray:
    """A synthetic RGB uint8 (h, w, 3) image: noisy background with a few solid shapes."""
    rng = np.random.default_rng(seed)
    img = (rng.random((h, w, 3)) * 60 + 90).astype(np.uint8)
    for _ in range(4):
        y, x = rng.integers(0, h - 40), rng.integers(0, w - 40)
        img[y : y + rng.integers(15, 40), x : x + rng.integers(15, 40)] = rng.integers(0, 255, 3)
    return img


@pytest.fixture
def scene():
    return make_scene()


@pytest.fixture(scope="session")
def small_weights(tmp_path_factory):
    """Seeded random weights for the small (MobileNetV3) architecture with 3 classes, as .pth.

    Loaded by path (``Segmenter(path)``) its classes are named class_1..class_3. For tests that need a
    model but not COCO: several times cheaper than ResNet-50 on the CPU.
    """
    import dataclasses

    import torch

    from masklab.models.loading import build_module
    from masklab.models.zoo import get_spec

    spec = dataclasses.replace(get_spec("small"), categories=("__background__", "a", "b", "c"))
    torch.manual_seed(99)
    module = build_module(spec)
    path = tmp_path_factory.mktemp("weights") / "small_random.pth"
    torch.save(module.state_dict(), path)
    return path


def pytest_addoption(parser):
    parser.addoption(
        "--accept",
        action="store_true",
        default=False,
        help="rewrite the golden expect-files (tests/golden/) from this run's outputs; review the diff before committing",
    )


@pytest.fixture
def accept(request) -> bool:
    """True under ``pytest --accept`` (or MASKLAB_ACCEPT=1): golden tests write their expect-files."""
    import os

    return bool(request.config.getoption("--accept")) or os.environ.get("MASKLAB_ACCEPT") == "1"


def pytest_collection_modifyitems(items):
    """The fault-injection suite (issue 20, ``tests/faults/``) is marked ``faults``; ``make test`` and CI run
    it. (Here, not in a ``tests/faults/conftest.py``: a second module named ``conftest`` would shadow this
    one for the tests that import ``make_scene`` from it.)"""
    for item in items:
        if "tests/faults/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.faults)
