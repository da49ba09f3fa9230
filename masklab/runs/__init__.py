"""Runs: segment many inputs into an output folder and record the run.

- :func:`run_segment` (:mod:`masklab.runs.folder`): images through a bounded local pipeline;
- :func:`segment_video` (:mod:`masklab.runs.video`): a video file or a camera, frame by frame;
- :func:`run_segment_ray` (:mod:`masklab.runs.ray`): images over a Ray cluster (``pip install "masklab[ray]"``);
- :class:`RunLedger` (:mod:`masklab.runs.ledger`): the one ``run.json`` / ``summary.csv`` / resume logic
  the image engines share.

Importing this package imports neither Ray, pyarrow nor OpenCV.
"""

from masklab.runs.folder import run_segment
from masklab.runs.ledger import (
    ImageResult,
    RunLedger,
    RunSummary,
    read_run_json,
    run_settings,
    settings_fingerprint,
)
from masklab.runs.ray import expand_sources, run_segment_ray
from masklab.runs.video import VIDEO_SUFFIXES, VideoSummary, is_video_path, segment_video

__all__ = [
    "ImageResult",
    "RunLedger",
    "RunSummary",
    "VIDEO_SUFFIXES",
    "VideoSummary",
    "expand_sources",
    "is_video_path",
    "read_run_json",
    "run_segment",
    "run_segment_ray",
    "run_settings",
    "segment_video",
    "settings_fingerprint",
]
