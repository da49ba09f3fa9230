"""Segment a video file or a camera (OpenCV): per-frame JSON Lines and an annotated video.

Outputs in ``out_dir`` for a source named ``<stem>``:

- ``<stem>.jsonl``: one line per processed frame,
  ``{"frame": i, "time_s": t, "width": W, "height": H, "instances": [...]}`` where ``frame`` counts
  from 0 in the source, ``time_s`` is ``frame / fps`` for files (seconds since the first frame for a
  camera) and ``instances`` is the per-image JSON's list (COCO RLE masks, boxes in pixels).
- ``<stem>.annotated.mp4``: the processed frames drawn in the ``viz`` style(s) at ``fps / every``
  frames per second (``mp4v``).
- with ``tracking`` (:class:`~masklab.tracking.TrackingOptions`): each JSONL instance gains ``track_id``
  (None while untracked), the video is coloured by track with trails, lines and zones, and
  ``<stem>.mot.txt``, ``<stem>.counts.json``, ``<stem>.events.jsonl`` are written
  (:mod:`masklab.tracking.session`).

A folder of images is read as a video too (its frames in name order, at ``fps``, 30 by default).

Both are written under hidden partial names and moved into place at the end, so a killed run never
leaves a file that looks finished. A camera (``source=0``) goes through the same code; it ends at
``end_s`` or when the camera stops.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from masklab.errors import ImageLoadError, UsageError
from masklab.io.atomic import atomic_write_json
from masklab.io.images import LoadedImage
from masklab.runs.ledger import run_settings
from masklab.tracking import TrackingOptions, TrackingSession, tracked_dicts

__all__ = ["VIDEO_SUFFIXES", "VideoSummary", "segment_video", "is_video_path", "image_sequence"]

#: Suffixes the CLI treats as videos.
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
_CAMERA_DEFAULT_FPS = 30.0


def is_video_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


@dataclass
class VideoSummary:
    """``frames_processed`` frames segmented out of ``frames_read`` decoded/skipped, in ``seconds``."""

    source: str
    jsonl: Path
    video: Path | None
    fps: float
    frames_read: int
    frames_processed: int
    seconds: float
    size_wh: tuple[int, int]

    @property
    def frames_per_s(self) -> float | None:
        return self.frames_processed / self.seconds if self.seconds > 0 else None


def _check_times(every: int, start_s: float, end_s: float | None) -> None:
    if every < 1:
        raise UsageError(f"--every must be >= 1, found {every}")
    if start_s < 0:
        raise UsageError(f"--start must be >= 0 seconds, found {start_s}")
    if end_s is not None and end_s <= start_s:
        raise UsageError(f"--end ({end_s} s) must be after --start ({start_s} s)")


@dataclass
class _Clip:
    """An opened source and the frame range to read: ``first`` (the first frame at or after the start),
    ``stop`` (the first frame not read; None: until the source ends), ``position`` the frames read so far."""

    cap: Any
    name: str
    camera: bool
    fps: float
    first: int
    stop: int | None
    position: int = 0


def image_sequence(folder: str | os.PathLike) -> list[Path]:
    """The image files directly in ``folder``, in name order (hidden files left out)."""
    from masklab.io.images import IMAGE_SUFFIXES

    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


class _ImageSequence:
    """A folder of frames behind the small part of ``cv2.VideoCapture`` that :func:`_frames` uses."""

    def __init__(self, files: list[Path]) -> None:
        self.files, self.pos = files, 0

    def grab(self) -> bool:
        self.pos += 1
        return self.pos <= len(self.files)

    def read(self) -> tuple[bool, np.ndarray | None]:
        from masklab.io.images import load_image

        if self.pos >= len(self.files):
            return False, None
        rgb = load_image(self.files[self.pos]).array
        self.pos += 1
        return True, np.ascontiguousarray(rgb[..., ::-1])

    def release(self) -> None:
        self.files = []


def _open_clip(source: str | os.PathLike | int, start_s: float, end_s: float | None, fps: float | None = None) -> _Clip:
    import cv2

    camera = isinstance(source, int)
    if not camera and Path(source).is_dir():
        files = image_sequence(source)
        if not files:
            raise ImageLoadError(f"{source}: no image files in this folder")
        rate = fps or _CAMERA_DEFAULT_FPS
        stop = min(math.ceil(end_s * rate - 1e-9), len(files)) if end_s is not None else len(files)
        return _Clip(_ImageSequence(files), str(source), False, rate, math.ceil(start_s * rate - 1e-9), stop)
    if not camera and not Path(source).is_file():
        raise ImageLoadError(f"{source}: no such video file")
    name = f"camera {source}" if camera else str(source)
    cap = cv2.VideoCapture(source if camera else str(source))
    if not cap.isOpened():
        raise ImageLoadError(f"{name}: OpenCV cannot open it as a video")
    fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
    if not (fps > 0 and math.isfinite(fps)):
        fps = _CAMERA_DEFAULT_FPS
    n_frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if not camera else 0
    first = math.ceil(start_s * fps - 1e-9)
    stop = math.ceil(end_s * fps - 1e-9) if end_s is not None else (n_frames if n_frames > 0 else None)
    return _Clip(cap, name, camera, fps, first, stop)


def _frames(clip: _Clip, *, every: int, start_s: float, end_s: float | None) -> Iterator[tuple[int, float, np.ndarray]]:
    """``(frame index, time in s, RGB uint8 (H, W, 3))`` for every ``every``-th frame in range; a file's
    time is ``index / fps``, a camera's the seconds since its first frame read."""
    t_cam0 = None
    while clip.stop is None or clip.position < clip.stop:
        idx = clip.position
        if not (idx >= clip.first and (idx - clip.first) % every == 0):
            if not clip.cap.grab():  # skipped frames are not converted to pixels
                return
            clip.position += 1
            continue
        ok, frame = clip.cap.read()
        if not ok:
            return
        now = time.monotonic()
        t_cam0 = now if t_cam0 is None else t_cam0
        if clip.camera and end_s is not None and now - t_cam0 >= end_s - start_s:
            return
        yield idx, (now - t_cam0) if clip.camera else idx / clip.fps, np.ascontiguousarray(frame[..., ::-1])
        clip.position += 1


class _AnnotatedVideo:
    """The annotated video, opened at the first frame (its size is the drawn frame's) under a partial name."""

    def __init__(self, path: Path, *, fps: float, name: str) -> None:
        self.path, self.fps, self.name, self.writer = path, fps, name, None

    def write(self, drawn_rgb: np.ndarray) -> None:
        import cv2

        if self.writer is None:
            h, w = drawn_rgb.shape[:2]
            self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
            if not self.writer.isOpened():
                raise ImageLoadError(f"{self.name}: OpenCV cannot write {self.path.name} (mp4v)")
        self.writer.write(np.ascontiguousarray(drawn_rgb[..., ::-1]))

    def close(self) -> bool:
        """Release the writer; True when a video was written."""
        if self.writer is None:
            return False
        self.writer.release()
        self.writer = None
        return True


def segment_video(
    source: str | os.PathLike | int,
    out_dir: str | os.PathLike,
    segmenter,
    *,
    viz: str | Sequence[str] | None = "instance",
    every: int = 1,
    start_s: float = 0.0,
    end_s: float | None = None,
    stem: str | None = None,
    progress: bool | None = None,
    tracking: TrackingOptions | None = None,
    fps: float | None = None,
) -> VideoSummary:
    """Segment every ``every``-th frame of ``source`` between ``start_s`` and ``end_s`` seconds.

    Args:
        source: a video file path, a folder of frames (name order), or an int camera index (``0``).
        viz: overlay style(s) for the annotated video; None writes only the JSON Lines.
        stem: output name (default: the file's stem, ``camera<N>`` for a camera).
        tracking: track, count and write the tracking files (see the module docstring).
        fps: frame rate of a folder of frames (default 30); a video file's own rate is used.
    Raises:
        ImageLoadError: the source cannot be opened or decoded as a video.
        UsageError: bad ``every``/``start_s``/``end_s``.
    """
    from tqdm.auto import tqdm

    from masklab.visualize import render

    _check_times(every, start_s, end_s)
    styles = [] if viz is None else [viz] if isinstance(viz, str) else list(viz)
    if fps is not None and not (fps > 0 and math.isfinite(fps)):
        raise UsageError(f"--fps must be > 0, found {fps}")
    clip = _open_clip(source, start_s, end_s, fps)
    stem = stem or (f"camera{source}" if clip.camera else Path(source).stem)
    session = TrackingSession(tracking, styles=styles if viz is not None else ()) if tracking else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jsonl_path, video_path = out / f"{stem}.jsonl", (out / f"{stem}.annotated.mp4" if styles else None)
    # Partial names keep the real suffix: OpenCV picks the container from it.
    jsonl_tmp, video = out / f".{stem}.partial.jsonl", _AnnotatedVideo(out / f".{stem}.partial.mp4", fps=clip.fps / every, name=clip.name)
    todo = None if clip.stop is None else max(0, len(range(clip.first, clip.stop, every)))
    show = True if progress is None else progress
    bar = tqdm(total=todo, desc=f"video {stem}", unit="frame", disable=not show, file=sys.stderr)
    processed, size_wh, t_run = 0, (0, 0), time.perf_counter()
    try:
        with open(jsonl_tmp, "w") as jf:
            for idx, t, rgb in _frames(clip, every=every, start_s=start_s, end_s=end_s):
                size_wh = (rgb.shape[1], rgb.shape[0])
                inst = segmenter.predict([LoadedImage(rgb, f"{clip.name}#{idx}")])[0]
                if session is not None:
                    inst = session.step(inst, frame=idx, time_s=t, image=rgb)
                dicts = tracked_dicts(inst) if session is not None else inst.to_dict()
                rec = {"frame": idx, "time_s": round(t, 6), "width": size_wh[0], "height": size_wh[1], "instances": dicts}
                jf.write(json.dumps(rec) + "\n")
                if styles:
                    video.write(session.draw(rgb, inst) if session is not None else render(rgb, inst, styles))
                processed += 1
                bar.update(1)
            jf.flush()
            os.fsync(jf.fileno())
        if session is not None:
            session.write(out, stem)
        if video.close():
            os.replace(video.path, video_path)
        elif processed == 0:
            video_path = None  # no frame in range: no video to write
        os.replace(jsonl_tmp, jsonl_path)
    finally:
        bar.close()
        clip.cap.release()
        video.close()
        jsonl_tmp.unlink(missing_ok=True)
        video.path.unlink(missing_ok=True)
    summary = VideoSummary(clip.name, jsonl_path, video_path, clip.fps, clip.position, processed, time.perf_counter() - t_run, size_wh)
    settings = run_settings(segmenter.settings(), {"viz": styles}) | {"every": every, "start_s": start_s, "end_s": end_s}
    settings |= {"fps": fps, "tracking": tracking.to_json() if tracking else None}
    _write_record(out / f"{stem}.video.json", summary, settings, every=every)
    return summary


def _write_record(path: Path, s: VideoSummary, settings: dict[str, Any], *, every: int) -> None:
    """``<stem>.video.json``: the source, settings, frame rates and counts, size, timing, output names."""
    atomic_write_json(
        path,
        {
            "source": s.source,
            "settings": settings,
            "fps_in": s.fps,
            "fps_out": s.fps / every,
            "frames_read": s.frames_read,
            "frames_processed": s.frames_processed,
            "size_wh": list(s.size_wh),
            "seconds": round(s.seconds, 3),
            "frames_per_s": round(s.frames_processed / s.seconds, 4) if s.seconds > 0 else None,
            "jsonl": s.jsonl.name,
            "video": s.video.name if s.video else None,
        },
        indent=2,
    )
