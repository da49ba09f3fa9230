"""Counting lines and zones over tracked instances: crossings, entries, exits, occupancy, dwell time.

**Anchor point.** Each tracked instance is placed at its *mask centroid* (pixel centres at +0.5; the box
centre when the mask is empty). The centroid follows the object's visible body, so it is steadier than a
box corner when a mask is partly hidden, and it is the right point for top-down views (conveyors).

**Lines** ``x1,y1,x2,y2``: the segment from ``(x1, y1)`` to ``(x2, y2)`` in pixels, an arrow. ``in`` is
a crossing from the arrow's left to its right *as seen on screen* (image y points down): for a line
drawn ``0,100 -> 200,100`` (pointing right), moving down counts ``in``; for ``100,200 -> 100,0``
(pointing up), moving right counts ``in``. A track's side is only decided once its anchor is more than
``hysteresis_px`` from the line; inside that band the side stays what it was, so jitter on the line
never counts twice. A change of side counts when the anchor's projection falls on the segment; a
track's first decided side is where it starts, never a crossing (a track that appears already past the
line, for example after an id switch, adds nothing).

**Zones** (polygons ``x1,y1,x2,y2,x3,y3,...``): a track enters when its anchor is more than
``hysteresis_px`` inside, exits when more than that outside (or when its track ends while inside: it
vanished; the exit is dated to the last frame it was seen). Occupancy counts, per frame, the tracked
instances *detected in that frame* inside the zone, so an object that vanished is never still counted.
Dwell time = exit time - entry time (seconds); stays still open at the end run to the last frame seen.

Instances without a track id (``track_ids`` -1) never count anywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from masklab.errors import UsageError
from masklab.structures.instances import Instances
from masklab.tracking.tracker import TRACK_IDS

__all__ = ["CountLine", "Zone", "Event", "Counter", "parse_line", "parse_zone", "anchor_points"]


def _split_name(text: str, default: str) -> tuple[str, str]:
    coords, _, name = text.partition(":")
    return coords, (name.strip() or default)


def _numbers(coords: str, what: str, text: str) -> list[float]:
    try:
        values = [float(v) for v in coords.split(",")]
    except ValueError:
        raise UsageError(f"{what} {text!r}: expected comma-separated numbers") from None
    if not all(np.isfinite(values)):
        raise UsageError(f"{what} {text!r}: coordinates must be finite")
    return values


@dataclass(frozen=True)
class CountLine:
    """A counting line from ``(x1, y1)`` to ``(x2, y2)`` in pixels, named ``name``."""

    x1: float
    y1: float
    x2: float
    y2: float
    name: str = "line"

    def __post_init__(self) -> None:
        if (self.x1, self.y1) == (self.x2, self.y2):
            raise UsageError(f"counting line {self.name!r}: its two ends are the same point")

    def signed_distance(self, pts: np.ndarray) -> np.ndarray:
        """float (N,): distance in px of points (N, 2) from the line, > 0 on the arrow's right (on screen)."""
        d = np.array([self.x2 - self.x1, self.y2 - self.y1])
        rel = np.asarray(pts, np.float64).reshape(-1, 2) - [self.x1, self.y1]
        return (d[0] * rel[:, 1] - d[1] * rel[:, 0]) / np.hypot(*d)

    def on_segment(self, pts: np.ndarray) -> np.ndarray:
        """bool (N,): the points' projections fall between the two ends."""
        d = np.array([self.x2 - self.x1, self.y2 - self.y1])
        t = (np.asarray(pts, np.float64).reshape(-1, 2) - [self.x1, self.y1]) @ d / float(d @ d)
        return (t >= 0) & (t <= 1)


@dataclass(frozen=True)
class Zone:
    """A polygon zone: ``points`` float (K, 2) ``(x, y)`` in pixels, K >= 3, named ``name``."""

    points: tuple[tuple[float, float], ...]
    name: str = "zone"

    def __post_init__(self) -> None:
        if len(self.points) < 3:
            raise UsageError(f"zone {self.name!r}: needs at least 3 points, found {len(self.points)}")

    def signed_distance(self, pts: np.ndarray) -> np.ndarray:
        """float (N,): distance in px from the polygon's edge, > 0 inside (OpenCV ``pointPolygonTest``)."""
        import cv2

        poly = np.asarray(self.points, np.float32).reshape(-1, 1, 2)
        return np.array([cv2.pointPolygonTest(poly, (float(x), float(y)), True) for x, y in np.reshape(pts, (-1, 2))])


def parse_line(text: str, *, index: int = 0) -> CountLine:
    """``"X1,Y1,X2,Y2[:NAME]"`` -> :class:`CountLine`; unnamed lines are ``line``, ``line2``, ..."""
    coords, name = _split_name(text, "line" if index == 0 else f"line{index + 1}")
    v = _numbers(coords, "--count-line", text)
    if len(v) != 4:
        raise UsageError(f"--count-line {text!r}: expected X1,Y1,X2,Y2[:NAME], found {len(v)} numbers")
    return CountLine(*v, name=name)


def parse_zone(text: str, *, index: int = 0) -> Zone:
    """``"X1,Y1,X2,Y2,X3,Y3,...[:NAME]"`` -> :class:`Zone`; unnamed zones are ``zone``, ``zone2``, ..."""
    coords, name = _split_name(text, "zone" if index == 0 else f"zone{index + 1}")
    v = _numbers(coords, "--zone", text)
    if len(v) < 6 or len(v) % 2:
        raise UsageError(f"--zone {text!r}: expected X1,Y1,X2,Y2,X3,Y3,... (3 or more points), found {len(v)} numbers")
    return Zone(tuple(zip(v[0::2], v[1::2])), name=name)


def anchor_points(instances: Instances) -> np.ndarray:
    """float64 (N, 2): each instance's anchor, the mask centroid (box centre for an empty mask)."""
    pts = instances.centroids().reshape(-1, 2)
    centre = (instances.boxes[:, :2] + instances.boxes[:, 2:]) / 2.0
    return np.where(np.isnan(pts), centre, pts)


@dataclass(frozen=True)
class Event:
    """A counted event: ``kind`` ``line`` (``direction`` in/out) or ``zone`` (``direction`` enter/exit)."""

    frame: int
    time_s: float
    track_id: int
    label: str
    kind: str
    name: str
    direction: str

    def to_json(self) -> dict:
        return asdict(self) | {"time_s": round(self.time_s, 6)}


def _tally() -> dict:
    return {"total": 0, "by_class": {}}


def _add(tally: dict, label: str) -> None:
    tally["total"] += 1
    tally["by_class"][label] = tally["by_class"].get(label, 0) + 1


@dataclass
class _Seen:
    label: str
    frame: int
    time_s: float


@dataclass
class Counter:
    """Feed :meth:`update` every processed frame (in order), then :meth:`finish`; :meth:`counts` is the
    ``counts.json`` document. See the module docstring for the rules."""

    lines: Sequence[CountLine] = ()
    zones: Sequence[Zone] = ()
    hysteresis_px: float = 2.0
    events: list[Event] = field(default_factory=list)
    _side: dict = field(default_factory=dict)  # (line name, track id) -> -1 / +1
    _inside: dict = field(default_factory=dict)  # (zone name, track id) -> entry time (s) while inside
    _seen: dict = field(default_factory=dict)  # track id -> _Seen (last frame it was detected)
    _occupancy: dict = field(default_factory=dict)  # zone name -> list of per-frame counts
    _dwell: dict = field(default_factory=dict)  # zone name -> list of stays

    def __post_init__(self) -> None:
        for kind, items in (("line", self.lines), ("zone", self.zones)):
            names = [x.name for x in items]
            if len(set(names)) != len(names):
                raise UsageError(f"two counting {kind}s share a name: {names}; name them with :NAME")
        if self.hysteresis_px < 0:
            raise UsageError(f"hysteresis_px must be >= 0, found {self.hysteresis_px}")
        self._lines = {ln.name: {"in": _tally(), "out": _tally()} for ln in self.lines}
        self._zones = {z.name: {"entries": _tally(), "exits": _tally()} for z in self.zones}
        self._occupancy = {z.name: [] for z in self.zones}
        self._dwell = {z.name: [] for z in self.zones}

    def _event(self, frame: int, t: float, tid: int, label: str, kind: str, name: str, direction: str) -> None:
        self.events.append(Event(frame, t, tid, label, kind, name, direction))

    def update(self, instances: Instances, *, frame: int, time_s: float, ended: Iterable[int] = ()) -> list[Event]:
        """Count one frame; ``ended``: track ids the tracker ended now. Returns this frame's new events."""
        start = len(self.events)
        ids = instances.extra.get(TRACK_IDS)
        if ids is None:
            raise UsageError("counting needs tracked instances (extra['track_ids']); run a MaskTracker first")
        keep = np.nonzero(np.asarray(ids) >= 0)[0]
        pts = anchor_points(instances[keep]) if len(keep) else np.zeros((0, 2))
        tids = [int(ids[k]) for k in keep]
        labels = [instances.labels[k] for k in keep]
        for tid, lab in zip(tids, labels):
            self._seen[tid] = _Seen(lab, frame, time_s)
        for ln in self.lines:
            self._count_line(ln, pts, tids, labels, frame, time_s)
        for z in self.zones:
            self._count_zone(z, pts, tids, labels, frame, time_s)
        for tid in ended:
            self._lost(tid)
        return self.events[start:]

    def _count_line(self, ln: CountLine, pts, tids, labels, frame: int, t: float) -> None:
        dist, on = ln.signed_distance(pts), ln.on_segment(pts)
        for tid, lab, d, o in zip(tids, labels, dist, on):
            if abs(d) <= self.hysteresis_px:
                continue  # in the band: the side stays as it was
            side, key = (1 if d > 0 else -1), (ln.name, tid)
            prev = self._side.get(key)
            self._side[key] = side
            if prev is not None and side != prev and o:
                direction = "in" if side > 0 else "out"
                _add(self._lines[ln.name][direction], lab)
                self._event(frame, t, tid, lab, "line", ln.name, direction)

    def _count_zone(self, z: Zone, pts, tids, labels, frame: int, t: float) -> None:
        dist = z.signed_distance(pts)
        occupied = 0
        for tid, lab, d in zip(tids, labels, dist):
            key = (z.name, tid)
            if d > self.hysteresis_px and key not in self._inside:
                self._inside[key] = t
                _add(self._zones[z.name]["entries"], lab)
                self._event(frame, t, tid, lab, "zone", z.name, "enter")
            elif d < -self.hysteresis_px and key in self._inside:
                self._close(z.name, tid, lab, frame, t, exited=True)
            occupied += key in self._inside
        self._occupancy[z.name].append(occupied)

    def _close(self, zone: str, tid: int, label: str, frame: int, t: float, *, exited: bool) -> None:
        enter = self._inside.pop((zone, tid))
        if exited:
            _add(self._zones[zone]["exits"], label)
            self._event(frame, t, tid, label, "zone", zone, "exit")
        self._dwell[zone].append({"track_id": tid, "class": label, "enter_s": round(enter, 6),
                                  "exit_s": round(t, 6) if exited else None, "dwell_s": round(t - enter, 6)})

    def _lost(self, tid: int) -> None:
        """A track ended: it exits every zone it was in, at the last frame it was seen."""
        seen = self._seen.get(tid)
        for z in self.zones:
            if (z.name, tid) in self._inside and seen is not None:
                self._close(z.name, tid, seen.label, seen.frame, seen.time_s, exited=True)

    def finish(self) -> None:
        """The video ended: stays still open are closed at their track's last frame (no exit event)."""
        for zone, tid in list(self._inside):
            seen = self._seen[tid]
            self._close(zone, tid, seen.label, seen.frame, seen.time_s, exited=False)

    def line_counts(self, name: str) -> dict:
        """``{"in": {"total": n, "by_class": {...}}, "out": {...}}`` for line ``name`` so far."""
        return self._lines[name]

    def zone_occupancy(self, name: str) -> int:
        """Tracked instances inside zone ``name`` in the last frame counted."""
        occ = self._occupancy[name]
        return occ[-1] if occ else 0

    def counts(self) -> dict:
        """The ``counts.json`` document (see the README, "Tracking and counting")."""
        lines = {ln.name: {"xyxy": [ln.x1, ln.y1, ln.x2, ln.y2], **self._lines[ln.name]} for ln in self.lines}
        zones = {}
        for z in self.zones:
            occ = self._occupancy[z.name]
            zones[z.name] = {
                "polygon": [list(p) for p in z.points],
                **self._zones[z.name],
                "occupancy": {"max": max(occ, default=0), "mean": round(float(np.mean(occ)), 6) if occ else 0.0},
                "dwell": sorted(self._dwell[z.name], key=lambda d: (d["enter_s"], d["track_id"])),
            }
        return {"anchor": "mask centroid", "hysteresis_px": self.hysteresis_px, "lines": lines, "zones": zones}
