"""Drawing tracks on video frames: instances coloured by track id, trails, counting lines and zones.

Images are RGB uint8 (H, W, 3); points are pixel ``(x, y)``. A track's colour is fixed by its id (the
same golden-ratio hue steps as class colours), untracked instances are grey.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from masklab.structures.instances import Instances
from masklab.tracking.counting import Counter, anchor_points
from masklab.tracking.tracker import TRACK_IDS
from masklab.visualize import InstanceVisualizer, class_color, get_visualizer, side_by_side

__all__ = ["TrackDrawer", "track_color"]

_GREY = (150, 150, 150)


def track_color(track_id: int) -> tuple[int, int, int]:
    """RGB colour of a track id (grey for -1, untracked)."""
    return _GREY if track_id < 0 else class_color(track_id)


def _text(img: np.ndarray, text: str, org: tuple[int, int], color=(255, 255, 255)) -> None:
    import cv2

    scale = 0.35 if min(img.shape[:2]) < 300 else 0.5
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x = int(np.clip(org[0], 0, max(img.shape[1] - tw - 2, 0)))
    y = int(np.clip(org[1], th + 2, img.shape[0] - base))
    cv2.rectangle(img, (x - 1, y - th - 2), (x + tw + 1, y + base), (0, 0, 0), -1)
    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)


@dataclass
class TrackDrawer:
    """Draw one tracked frame: ``styles`` as for :func:`masklab.visualize.render` (``instance`` is drawn
    with track colours and ``#id label`` captions), then ``trail`` past anchor points per track (0 = no
    trails), the counter's lines (arrow, ``in``/``out`` totals) and zones (outline, occupancy)."""

    styles: Sequence[str] = ("instance",)
    trail: int = 20
    _trails: dict = field(default_factory=dict)

    @staticmethod
    def _panel(style: str, image: np.ndarray, inst: Instances, ids: np.ndarray) -> np.ndarray:
        if style != "instance":
            return get_visualizer(style).annotate(image, inst)
        colors = [track_color(int(t)) for t in ids]
        captions = [f"#{int(t)} {lab}" if t >= 0 else lab for t, lab in zip(ids, inst.labels)]
        return InstanceVisualizer(alpha=0.45).annotate(image, inst, colors=colors, captions=captions)

    def _update_trails(self, inst: Instances, ids: np.ndarray) -> None:
        for tid, (x, y) in zip(ids, anchor_points(inst)):
            if tid >= 0:
                self._trails.setdefault(int(tid), deque(maxlen=self.trail)).append((int(round(x)), int(round(y))))
        current = {int(t) for t in ids if t >= 0}
        for tid in [t for t in self._trails if t not in current]:
            del self._trails[tid]  # a track not seen in this frame has no trail drawn

    def _draw_trails(self, img: np.ndarray) -> None:
        import cv2

        for tid in self._trails:
            pts = np.array(self._trails[tid], np.int32).reshape(-1, 1, 2)
            cv2.polylines(img, [pts], False, track_color(tid), 2, cv2.LINE_AA)
            cv2.circle(img, tuple(int(v) for v in pts[-1, 0]), 3, track_color(tid), -1)

    @staticmethod
    def _draw_counts(img: np.ndarray, counter: Counter) -> None:
        import cv2

        for ln in counter.lines:
            p1, p2 = (int(round(ln.x1)), int(round(ln.y1))), (int(round(ln.x2)), int(round(ln.y2)))
            cv2.arrowedLine(img, p1, p2, (255, 255, 255), 2, cv2.LINE_AA, tipLength=0.06)
            c = counter.line_counts(ln.name)
            _text(img, f"{ln.name} in {c['in']['total']} out {c['out']['total']}", (p2[0] + 6, p2[1] + 14), (255, 255, 120))
        for z in counter.zones:
            pts = np.round(np.asarray(z.points)).astype(np.int32).reshape(-1, 1, 2)
            cv2.polylines(img, [pts], True, (120, 255, 120), 2, cv2.LINE_AA)
            _text(img, f"{z.name}: {counter.zone_occupancy(z.name)}", tuple(int(v) for v in pts[0, 0]), (120, 255, 120))

    def draw(self, image: np.ndarray, instances: Instances, counter: Counter | None = None) -> np.ndarray:
        """A new RGB uint8 frame with the tracked ``instances`` (``extra["track_ids"]``) drawn on ``image``."""
        ids = np.asarray(instances.extra.get(TRACK_IDS, np.full(len(instances), -1)), np.int64)
        if self.trail > 0:
            self._update_trails(instances, ids)
        panels = []
        for style in self.styles:
            panel = self._panel(str(style), image, instances, ids)
            self._draw_trails(panel)
            if counter is not None:
                self._draw_counts(panel, counter)
            panels.append(panel)
        return panels[0] if len(panels) == 1 else side_by_side(panels, [str(s) for s in self.styles])
