"""`TrackingSession`: one video's tracker, counter, drawer and output files, fed frame by frame.

Outputs for a video named ``<stem>`` (all written atomically by :meth:`TrackingSession.write`):

- ``<stem>.mot.txt``: MOTChallenge rows of every tracked instance (:mod:`masklab.io.formats.mot`;
  frame = masklab frame index + 1);
- ``<stem>.counts.json``: :meth:`masklab.tracking.counting.Counter.counts` (lines: ``in``/``out`` per
  class and total; zones: entries, exits, occupancy max/mean, dwell per track) plus the tracker settings;
- ``<stem>.events.jsonl``: one :class:`~masklab.tracking.counting.Event` per line, in the order counted.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from masklab.io.atomic import atomic_write_json, atomic_write_text
from masklab.io.formats.mot import MotRow, write_mot
from masklab.structures.instances import Instances
from masklab.tracking.counting import Counter, CountLine, Zone
from masklab.tracking.draw import TrackDrawer
from masklab.tracking.tracker import TRACK_IDS, MaskTracker, TrackerSettings

__all__ = ["TrackingOptions", "TrackingSession", "tracked_dicts"]


@dataclass(frozen=True)
class TrackingOptions:
    """What a tracked run does: ``tracker`` settings, counting ``lines`` and ``zones``, ``trail`` length
    in frames for the annotated video (0 = none), ``hysteresis_px`` for lines and zones."""

    tracker: TrackerSettings = field(default_factory=TrackerSettings)
    lines: tuple[CountLine, ...] = ()
    zones: tuple[Zone, ...] = ()
    trail: int = 20
    hysteresis_px: float = 2.0

    def to_json(self) -> dict:
        return {"tracker": dataclasses.asdict(self.tracker), "trail": self.trail, "hysteresis_px": self.hysteresis_px,
                "lines": [dataclasses.asdict(x) for x in self.lines], "zones": [dataclasses.asdict(z) for z in self.zones]}


def tracked_dicts(instances: Instances) -> list[dict]:
    """The per-image JSON instance list, each with ``track_id`` (None when untracked)."""
    ids = instances.extra[TRACK_IDS]
    return [d | {"track_id": int(t) if t >= 0 else None} for d, t in zip(instances.to_dict(), ids)]


class TrackingSession:
    """Call :meth:`step` for each processed frame in order, then :meth:`write` once."""

    def __init__(self, options: TrackingOptions, *, styles: Sequence[str] = ("instance",)) -> None:
        self.options = options
        self.tracker = MaskTracker(options.tracker)
        self.counter = Counter(lines=options.lines, zones=options.zones, hysteresis_px=options.hysteresis_px)
        self.drawer = TrackDrawer(styles=tuple(styles), trail=options.trail) if styles else None
        self.rows: list[MotRow] = []
        self.seconds = 0.0  # time spent in step(): tracking and counting, not the model


    def step(self, instances: Instances, *, frame: int, time_s: float, image: np.ndarray | None = None) -> Instances:
        """Track and count one frame; ``image``: the frame (RGB uint8 (H, W, 3)) for the tracker's
        appearance cue and re-identification. Returns the instances with ``extra["track_ids"]``."""
        t0 = time.perf_counter()
        up = self.tracker.update(instances, image=image)
        tracked = up.instances
        self.counter.update(tracked, frame=frame, time_s=time_s, ended=up.ended)
        for box, tid, score in zip(tracked.boxes, tracked.extra[TRACK_IDS], tracked.scores):
            if tid >= 0:
                x1, y1, x2, y2 = (float(v) for v in box)
                self.rows.append(MotRow(frame + 1, int(tid), x1, y1, x2 - x1, y2 - y1, float(score)))
        self.seconds += time.perf_counter() - t0
        return tracked

    def draw(self, image: np.ndarray, tracked: Instances) -> np.ndarray:
        """The annotated frame (RGB uint8 (H, W, 3)); needs ``styles``."""
        return self.drawer.draw(image, tracked, self.counter)

    def write(self, out_dir: Path, stem: str) -> dict[str, Path]:
        """End the tracks and write the three files; returns them by kind (``mot``, ``counts``, ``events``)."""
        self.tracker.finish()
        self.counter.finish()  # stays still open end at their track's last frame seen
        paths = {"mot": out_dir / f"{stem}.mot.txt", "counts": out_dir / f"{stem}.counts.json",
                 "events": out_dir / f"{stem}.events.jsonl"}
        write_mot(paths["mot"], self.rows)
        atomic_write_json(paths["counts"], self.counter.counts() | {"settings": self.options.to_json()}, indent=2)
        atomic_write_text(paths["events"], "".join(json.dumps(e.to_json()) + "\n" for e in self.counter.events))
        return paths
