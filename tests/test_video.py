"""Video segmentation: a generated clip gives one JSONL record per processed frame and a readable
annotated video with the right frame count, size and frame order."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from masklab.cli import main
from masklab.errors import ImageLoadError, UsageError
from masklab.runs import segment_video
from masklab.structures.masks import decode_rle

FPS, W, H, N = 12.0, 160, 120, 24


@pytest.fixture(autouse=True)
def _one_torch_thread(monkeypatch):
    monkeypatch.setenv("MASKLAB_NUM_THREADS", "1")  # see tests/test_batch.py


def _frame(i: int) -> np.ndarray:
    """BGR frame i: grey background, a white square whose x position encodes the frame index."""
    f = np.full((H, W, 3), 90, np.uint8)
    x = 4 + 5 * i
    f[40:80, x : x + 30] = 255
    return f


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (W, H))
    assert vw.isOpened()
    for i in range(N):
        vw.write(_frame(i))
    vw.release()
    return path


def _read_all(path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    return frames


def test_video_cli_every_start_end(clip, tmp_path, small_weights, capsys):
    out = tmp_path / "out"
    args = ["segment", str(clip), "--out", str(out), "--model", str(small_weights), "--device", "cpu"]
    args += ["--min-size", "96", "--max-size", "160", "--score-thresh", "0.0", "--max-detections", "2"]
    args += ["--no-progress", "--viz", "outline"]
    args += ["--every", "2", "--start", "0.5", "--end", "1.75"]
    assert main(args) == 0
    # Frames with time in [0.5 s, 1.75 s) at 12 fps are 6..20; every 2nd from 6: 6, 8, ..., 20.
    expected = list(range(6, 21, 2))
    records = [json.loads(line) for line in (out / "clip.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in records] == expected
    assert [r["time_s"] for r in records] == pytest.approx([i / FPS for i in expected])
    assert all((r["width"], r["height"]) == (W, H) for r in records)
    assert any(r["instances"] for r in records), "score 0 on random weights should give instances"
    for r in records:
        for d in r["instances"]:
            m = decode_rle([d["rle"]], (H, W))[0]
            assert m.shape == (H, W) and int(m.sum()) == d["area_px"]
    annotated = _read_all(out / "clip.annotated.mp4")
    assert len(annotated) == len(expected) and annotated[0].shape == (H, W, 3)
    # Each annotated frame is closest to its own source frame (the square moves 5 px per frame). Outlines
    # (not filled masks: random-weight masks can cover the square) leave the square's position readable.
    src = [_frame(i).astype(int) for i in range(N)]
    for k, f in enumerate(annotated):
        white = (f.astype(int).min(axis=2) > 200)[40:80].sum(axis=0)
        assert white.argmax() - 5 * expected[k] in range(-2, 35), k
        nearest = int(np.argmin([np.abs(f.astype(int) - s).mean() for s in src]))
        assert abs(nearest - expected[k]) <= 1, (k, nearest)
    meta = json.loads((out / "clip.video.json").read_text())
    assert meta["frames_processed"] == len(expected) and meta["fps_out"] == pytest.approx(FPS / 2)
    assert "frames/s" in capsys.readouterr().err
    assert not list(out.glob(".*partial*"))  # partial files moved into place


def test_video_every_frame_no_viz(clip, tmp_path, small_weights):
    from masklab import Segmenter

    seg = Segmenter(small_weights, device="cpu", score_thresh=0.9, min_size=64, max_size=96)
    s = segment_video(clip, tmp_path, seg, viz=None, progress=False)
    lines = (tmp_path / "clip.jsonl").read_text().splitlines()
    assert s.frames_processed == N == len(lines) and s.video is None
    assert not (tmp_path / "clip.annotated.mp4").exists()


def test_video_errors(tmp_path, small_weights):
    from masklab import Segmenter

    seg = Segmenter(small_weights, device="cpu", min_size=64, max_size=96)
    (tmp_path / "fake.mp4").write_bytes(b"not a video at all")
    with pytest.raises(ImageLoadError, match="cannot open"):
        segment_video(tmp_path / "fake.mp4", tmp_path / "o", seg)
    with pytest.raises(ImageLoadError, match="no such video"):
        segment_video(tmp_path / "missing.mp4", tmp_path / "o", seg)
    with pytest.raises(UsageError, match="--every"):
        segment_video(tmp_path / "fake.mp4", tmp_path / "o", seg, every=0)
    with pytest.raises(UsageError, match="--end"):
        segment_video(tmp_path / "fake.mp4", tmp_path / "o", seg, start_s=2, end_s=1)
