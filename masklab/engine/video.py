"""Segment a video file or a camera (OpenCV): per-frame JSON Lines and an annotated video.

Outputs in ``out_dir`` for a source named ``<stem>``:

- ``<stem>.jsonl``: one line per processed frame,
  ``{"frame": i, "time_s": t, "width": W, "height": H, "instances": [...]}`` where ``frame`` counts
  from 0 in the source, ``time_s`` is ``frame / fps`` for files (seconds since the first frame for a
  camera) and ``instances`` is the per-image JSON's list (COCO RLE masks, boxes in pixels).
- ``<stem>.annotated.mp4``: the processed frames drawn in the ``viz`` style(s) at ``fps / every``
  frames per second (``mp4v``).

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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from masklab.errors import ImageLoadError, UsageError
from masklab.io.images import LoadedImage

__all__ = ["VIDEO_SUFFIXES", "VideoSummary", "segment_video", "is_video_path"]

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
) -> VideoSummary:
    """Segment every ``every``-th frame of ``source`` between ``start_s`` and ``end_s`` seconds.

    Args:
        source: a video file path, or an int camera index (``0`` = the first camera).
        viz: overlay style(s) for the annotated video; None writes only the JSON Lines.
        stem: output name (default: the file's stem, ``camera<N>`` for a camera).
    Raises:
        ImageLoadError: the source cannot be opened or decoded as a video.
        UsageError: bad ``every``/``start_s``/``end_s``.
    """
    import cv2
    from tqdm.auto import tqdm

    from masklab.io.atomic import atomic_write_json
    from masklab.visualize import render

    _check_times(every, start_s, end_s)
    camera = isinstance(source, int)
    if not camera and not Path(source).is_file():
        raise ImageLoadError(f"{source}: no such video file")
    name = f"camera {source}" if camera else str(source)
    stem = stem or (f"camera{source}" if camera else Path(source).stem)
    styles = [] if viz is None else [viz] if isinstance(viz, str) else list(viz)
    cap = cv2.VideoCapture(source if camera else str(source))
    if not cap.isOpened():
        raise ImageLoadError(f"{name}: OpenCV cannot open it as a video")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jsonl_path, video_path = out / f"{stem}.jsonl", (out / f"{stem}.annotated.mp4" if styles else None)
    # Partial names keep the real suffix: OpenCV picks the container from it.
    jsonl_tmp = out / f".{stem}.partial.jsonl"
    video_tmp = out / f".{stem}.partial.mp4"
    fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
    if not (fps > 0 and math.isfinite(fps)):
        fps = _CAMERA_DEFAULT_FPS
    n_frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if not camera else 0
    first = math.ceil(start_s * fps - 1e-9)
    stop = math.ceil(end_s * fps - 1e-9) if end_s is not None else (n_frames if n_frames > 0 else None)
    todo = None if stop is None else max(0, len(range(first, stop, every)))
    show = True if progress is None else progress
    bar = tqdm(total=todo, desc=f"video {stem}", unit="frame", disable=not show, file=sys.stderr)
    vwriter = None
    idx = processed = 0
    size_wh = (0, 0)
    t_run = time.perf_counter()
    t_cam0 = None
    try:
        with open(jsonl_tmp, "w") as jf:
            while stop is None or idx < stop:
                wanted = idx >= first and (idx - first) % every == 0
                if not wanted:
                    if not cap.grab():  # skipped frames are not converted to pixels
                        break
                    idx += 1
                    continue
                ok, frame = cap.read()
                if not ok:
                    break
                now = time.monotonic()
                t_cam0 = now if t_cam0 is None else t_cam0
                if camera and end_s is not None and now - t_cam0 >= end_s - start_s:
                    break
                rgb = np.ascontiguousarray(frame[..., ::-1])
                size_wh = (rgb.shape[1], rgb.shape[0])
                inst = segmenter.predict([LoadedImage(rgb, f"{name}#{idx}")])[0]
                t = (now - t_cam0) if camera else idx / fps
                rec = {
                    "frame": idx,
                    "time_s": round(t, 6),
                    "width": size_wh[0],
                    "height": size_wh[1],
                    "instances": inst.to_dict(),
                }
                jf.write(json.dumps(rec) + "\n")
                if styles:
                    drawn = render(rgb, inst, styles)
                    if vwriter is None:
                        h, w = drawn.shape[:2]
                        vwriter = cv2.VideoWriter(str(video_tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps / every, (w, h))
                        if not vwriter.isOpened():
                            raise ImageLoadError(f"{name}: OpenCV cannot write {video_tmp.name} (mp4v)")
                    vwriter.write(np.ascontiguousarray(drawn[..., ::-1]))
                processed += 1
                idx += 1
                bar.update(1)
            jf.flush()
            os.fsync(jf.fileno())
        if vwriter is not None:
            vwriter.release()
            vwriter = None
            os.replace(video_tmp, video_path)
        elif video_path is not None and processed == 0:
            video_path = None  # no frame in range: no video to write
        os.replace(jsonl_tmp, jsonl_path)
    finally:
        bar.close()
        cap.release()
        if vwriter is not None:
            vwriter.release()
        jsonl_tmp.unlink(missing_ok=True)
        video_tmp.unlink(missing_ok=True)
    seconds = time.perf_counter() - t_run
    summary = VideoSummary(name, jsonl_path, video_path, fps, idx, processed, seconds, size_wh)
    atomic_write_json(
        out / f"{stem}.video.json",
        {
            "source": name,
            "settings": {**segmenter.settings(), "viz": styles, "every": every, "start_s": start_s, "end_s": end_s},
            "fps_in": fps,
            "fps_out": fps / every,
            "frames_read": idx,
            "frames_processed": processed,
            "size_wh": list(size_wh),
            "seconds": round(seconds, 3),
            "frames_per_s": round(processed / seconds, 4) if seconds > 0 else None,
            "jsonl": jsonl_path.name,
            "video": video_path.name if video_path else None,
        },
        indent=2,
    )
    return summary
