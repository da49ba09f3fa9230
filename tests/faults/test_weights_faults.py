"""Weights under faults (issue 20): truncated, garbage and bit-flipped files given as ``--model`` or
``--weights`` stop with a clear "damaged" message and exit 4 (weights that do not fit); a cached file
changed in place is refused with exit 3 (weights unavailable), even with its time put back, is not listed
as cached, and ``masklab models --verify`` finds it."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fault_helpers import DEMO_MODEL, assert_clean_failure, cli
from PIL import Image

from masklab.cli import main
from masklab.errors import WeightsUnavailableError
from masklab.models import weights as W
from masklab.models.zoo import MODELS

ZOO = "maskrcnn_resnet50_fpn_v2"  # the entry whose published check is torchvision's 8-hex sha256 prefix


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "a.png"
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(path)
    return path


def _damaged(kind: str, folder: Path) -> Path:
    """A weights file damaged as ``kind`` says, from the shipped demo model."""
    good = DEMO_MODEL.read_bytes()
    if kind.endswith("pth"):
        from safetensors.torch import load_file

        buf = folder / "good.pth"
        torch.save(load_file(str(DEMO_MODEL)), buf)
        good = buf.read_bytes()
    suffix = ".pth" if kind.endswith("pth") else ".safetensors"
    data = {
        "truncated": good[: len(good) // 2],
        "empty": b"",
        "garbage": np.random.default_rng(1).bytes(4096),
        # a flipped bit in the header's opening "{" (a flip in tensor data parses: only a checksum sees it)
        "header-flip": good[:8] + bytes([good[8] ^ 0x40]) + good[9:],
    }[kind.removesuffix("-pth")]
    path = folder / f"weights{suffix}"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("kind", ["truncated", "empty", "garbage", "header-flip", "truncated-pth", "garbage-pth"])
@pytest.mark.parametrize("flag", ["--model", "--weights"])
def test_damaged_weights_file_is_a_clear_exit_4(kind, flag, image, tmp_path, capsys):
    path = _damaged(kind, tmp_path)
    model = ["--model", str(path)] if flag == "--model" else ["--model", "small", "--weights", str(path)]
    rc = main(["segment", str(image), "--out", str(tmp_path / "out"), *model, "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 4, err
    assert "is damaged" in err and str(path) in err and "Traceback" not in err, err  # (tmp_path has "damaged")


def test_damaged_packaged_model_in_a_child_process(image, tmp_path):
    """The demo model (weights + card) with its weights torn: the user's real exit code and stderr."""
    model = tmp_path / "shapes_small.safetensors"
    shutil.copy(DEMO_MODEL.with_suffix(".json"), model.with_suffix(".json"))
    model.write_bytes(DEMO_MODEL.read_bytes()[:100_000])
    proc = cli("segment", str(image), "--out", str(tmp_path / "out"), "--model", str(model), "--device", "cpu",
               "--no-progress")
    assert_clean_failure(proc, 4, "is damaged", "truncated", str(model))


# -- the weights cache ---------------------------------------------------------------------------------
@pytest.fixture
def cached(monkeypatch, tmp_path):
    """The demo weights placed in an empty cache as ZOO's file, its published check an 8-hex prefix."""
    monkeypatch.setenv("MASKLAB_HOME", str(tmp_path / "home"))
    digest = W.sha256_file(DEMO_MODEL)
    spec = dataclasses.replace(MODELS[ZOO].weights, sha256=digest[:8], filename="zoo_weights.safetensors")
    monkeypatch.setitem(MODELS, ZOO, dataclasses.replace(MODELS[ZOO], weights=spec))
    path = W.weights_path(spec)
    path.parent.mkdir(parents=True)
    shutil.copy(DEMO_MODEL, path)
    return spec, path, digest


def _flip_in_place(path: Path, offset: int) -> None:
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 1]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_size == st.st_size


def _models(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["models", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _row(listing: str) -> str:
    """ZOO's line of the ``masklab models`` table."""
    return next(line for line in listing.splitlines() if line.split() and line.split()[0] == ZOO)


def test_first_check_records_the_full_digest(cached):
    spec, path, digest = cached
    assert W.ensure_weights(spec, progress=False) == path  # checked against the 8-hex prefix
    marker = json.loads(path.with_name(path.name + ".verified").read_text())
    assert marker["sha256"] == digest and len(marker["sha256"]) == 64 and marker["published"] == spec.sha256


def test_wrong_prefix_is_refused_at_first_check(cached, monkeypatch):
    spec, path, digest = cached
    wrong = dataclasses.replace(spec, sha256="00000000" if not digest.startswith("0") else "ffffffff")
    with pytest.raises(WeightsUnavailableError, match="does not match"):
        W.ensure_weights(wrong, progress=False)
    assert not path.with_name(path.name + ".verified").exists()


def test_byte_flipped_with_time_restored_is_refused(cached, image, tmp_path, capsys):
    spec, path, _ = cached
    W.ensure_weights(spec, progress=False)
    rc, out, _ = _models(capsys)
    assert rc == 0 and " cached" in _row(out) and "not cached" not in _row(out) and "CORRUPT" not in _row(out)
    _flip_in_place(path, path.stat().st_size // 2)  # tensor data: the file still parses and would load
    rc = main(["segment", str(image), "--out", str(tmp_path / "out"), "--model", ZOO, "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 3 and "corrupt" in err and "recorded when it was first verified" in err, err
    rc, out, _ = _models(capsys)
    assert "CORRUPT" in _row(out) and " cached" not in _row(out)
    rc, out, _ = _models(capsys, "--json")
    assert next(c for c in json.loads(out) if c["name"] == ZOO)["cached"] is False
    rc, out, _ = _models(capsys, "--verify")
    assert rc == 3 and "CORRUPT" in out and str(path) in out and "1 corrupt" in out, out


def test_verify_rehashes_what_the_stamp_would_trust(cached, capsys):
    """A change the stat stamp cannot see (here: the marker rewritten to the new stat, as a coarse-time
    file system or a restored backup could leave it) passes a load; --verify hashes and finds it."""
    spec, path, _ = cached
    W.ensure_weights(spec, progress=False)
    original = path.read_bytes()
    _flip_in_place(path, 1000)
    marker_path = path.with_name(path.name + ".verified")
    marker = json.loads(marker_path.read_text())
    st = path.stat()
    marker.update(size=st.st_size, mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns, inode=st.st_ino)
    marker_path.write_text(json.dumps(marker))
    assert W.ensure_weights(spec, progress=False) == path  # the cheap check trusts the stamp (documented)
    rc, out, _ = _models(capsys, "--verify")
    assert rc == 3 and "CORRUPT" in out, out
    path.write_bytes(original)  # the right bytes back: verified again, by the full digest
    rc, out, _ = _models(capsys, "--verify")
    assert rc == 0 and "ok" in out and "0 corrupt" in out, out


def test_old_size_mtime_stamp_is_checked_again(cached):
    """A marker from before (``size mtime published`` text) is not trusted: the file is hashed once more."""
    spec, path, digest = cached
    st = path.stat()
    marker_path = path.with_name(path.name + ".verified")
    marker_path.write_text(f"{st.st_size} {st.st_mtime_ns} {spec.sha256}")
    _flip_in_place(path, 1000)  # after this flip the prefix check still decides: sha256 changes entirely
    with pytest.raises(WeightsUnavailableError, match="corrupt"):
        W.ensure_weights(spec, progress=False)
