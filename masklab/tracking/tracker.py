"""`MaskTracker`: ByteTrack-style multi-object tracking on boxes *and* masks, one id space, per-class tracks.

Why our own association step: the maintained permissive trackers match on box IoU only and are
class-agnostic (``trackers``' ``ByteTrackTracker``; supervision's ``ByteTrack`` moved there), and the
``trackers`` package requires ``opencv-python``, which clashes with masklab's ``opencv-python-headless``.
The motion model is filterpy's :class:`~filterpy.kalman.KalmanFilter` (constant velocity on the box
centre and size, SORT's noise settings); the assignment is scipy's ``linear_sum_assignment``. What is
ours is the similarity and the bookkeeping, per frame:

1. every track's Kalman filter predicts its box; its last mask is moved with the predicted centre;
2. similarity(track, detection) = ``(1 - mask_weight) * box IoU + mask_weight * mask IoU``, and 0 when
   the classes differ (a track never changes class, so one id never mixes two classes' counts);
3. ByteTrack's two stages: detections scoring >= ``high_score`` are matched to all tracks first, the
   lower-scoring ones then only to tracks still unmatched (a partly hidden object keeps its track);
4. a match needs similarity >= ``match_thresh``; an unmatched high-scoring detection starts a
   *tentative* track, which gets an id after ``min_hits`` consecutive matches (until then its
   detections have id -1 and are never counted); a confirmed track missed for more than
   ``buffer_frames`` processed frames ends (until then it keeps predicting, so an object hidden
   briefly comes back with its id).

Ids are positive ints, unique across classes, never reused within one tracker.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from masklab.errors import UsageError
from masklab.optional import require
from masklab.structures.instances import Instances

__all__ = ["TrackerSettings", "MaskTracker", "TrackUpdate", "TRACK_IDS"]

#: The ``Instances.extra`` key holding the track ids: int64 (N,), -1 = not (yet) tracked.
TRACK_IDS = "track_ids"


@dataclass(frozen=True)
class TrackerSettings:
    """``buffer_frames``: processed frames a lost track is kept (>= 0); ``high_score``: ByteTrack's
    first-stage score in [0, 1]; ``match_thresh``: least similarity for a match, (0, 1];
    ``mask_weight``: share of mask IoU in the similarity, [0, 1]; ``min_hits``: matches before a track
    gets an id (>= 1); ``per_class``: tracks never match another class's detections."""

    buffer_frames: int = 30
    high_score: float = 0.6
    match_thresh: float = 0.2
    mask_weight: float = 0.5
    min_hits: int = 2
    per_class: bool = True

    def __post_init__(self) -> None:
        if self.buffer_frames < 0:
            raise UsageError(f"--track-buffer must be >= 0 frames, found {self.buffer_frames}")
        if self.min_hits < 1:
            raise UsageError(f"min_hits must be >= 1, found {self.min_hits}")
        for name in ("high_score", "mask_weight"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UsageError(f"{name} must be in [0, 1], found {getattr(self, name)}")
        if not 0.0 < self.match_thresh <= 1.0:
            raise UsageError(f"match_thresh must be in (0, 1], found {self.match_thresh}")


def _kalman(box: np.ndarray):
    """A constant-velocity filter on (cx, cy, w, h) with SORT's noise settings."""
    KalmanFilter = require("filterpy.kalman").KalmanFilter
    kf = KalmanFilter(dim_x=8, dim_z=4)
    kf.F = np.eye(8) + np.eye(8, k=4)
    kf.H = np.eye(4, 8)
    kf.R[2:, 2:] *= 10.0
    kf.P[4:, 4:] *= 1000.0  # unknown initial velocity
    kf.P *= 10.0
    kf.Q[4:, 4:] *= 0.01
    kf.x[:4, 0] = _cxcywh(box)
    return kf


def _cxcywh(box: np.ndarray) -> np.ndarray:
    x1, y1, x2, y2 = (float(v) for v in box)
    return np.array([(x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, 1.0), max(y2 - y1, 1.0)])


def _mask_crop(mask: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, int, int]:
    """The mask's pixels inside its (integer, clipped) box, and the crop's top-left ``(x, y)``."""
    h, w = mask.shape
    x1, y1 = max(int(np.floor(box[0])), 0), max(int(np.floor(box[1])), 0)
    x2, y2 = min(int(np.ceil(box[2])), w), min(int(np.ceil(box[3])), h)
    return mask[y1:max(y2, y1), x1:max(x2, x1)], x1, y1


def _crop_iou(a: np.ndarray, ax: int, ay: int, b: np.ndarray, bx: int, by: int) -> float:
    """IoU of two bool crops placed with top-left corners ``(ax, ay)`` and ``(bx, by)``."""
    x0, y0 = max(ax, bx), max(ay, by)
    x1, y1 = min(ax + a.shape[1], bx + b.shape[1]), min(ay + a.shape[0], by + b.shape[0])
    inter = 0
    if x1 > x0 and y1 > y0:
        inter = int(np.count_nonzero(a[y0 - ay:y1 - ay, x0 - ax:x1 - ax] & b[y0 - by:y1 - by, x0 - bx:x1 - bx]))
    union = int(np.count_nonzero(a)) + int(np.count_nonzero(b)) - inter
    return inter / union if union > 0 else 0.0


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of xyxy boxes: float (len(a), len(b))."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


@dataclass
class _Track:
    kf: object
    class_id: int
    crop: np.ndarray
    crop_xy: tuple[int, int]
    center: tuple[float, float]
    track_id: int = -1
    hits: int = 1
    misses: int = 0

    def predicted_box(self) -> np.ndarray:
        cx, cy, w, h = self.kf.x[:4, 0]
        w, h = max(w, 1.0), max(h, 1.0)
        return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])

    def predict(self) -> None:
        for k in (2, 3):  # a shrinking box stops shrinking before it vanishes
            if self.kf.x[k, 0] + self.kf.x[k + 4, 0] < 1.0:
                self.kf.x[k + 4, 0] = 0.0
        self.kf.predict()

    def moved_crop(self) -> tuple[np.ndarray, int, int]:
        cx, cy = self.kf.x[0, 0], self.kf.x[1, 0]
        dx, dy = int(round(cx - self.center[0])), int(round(cy - self.center[1]))
        return self.crop, self.crop_xy[0] + dx, self.crop_xy[1] + dy


@dataclass(frozen=True)
class TrackUpdate:
    """One frame's result: ``instances`` (same order as given, masks kept) with ``extra["track_ids"]``;
    ``ended`` the ids of confirmed tracks that ended in this update (lost for longer than the buffer)."""

    instances: Instances
    ended: tuple[int, ...] = ()


@dataclass
class MaskTracker:
    """Call :meth:`update` once per processed frame, in order; see the module docstring.

    Example:
        >>> tracker = MaskTracker(TrackerSettings(buffer_frames=10))     # doctest: +SKIP
        >>> tracked = tracker.update(instances).instances
        >>> tracked.extra["track_ids"]                                    # int64 (N,), -1 = untracked
    """

    settings: TrackerSettings = field(default_factory=TrackerSettings)
    tracks: list[_Track] = field(default_factory=list)
    _next_id: int = 1

    def __post_init__(self) -> None:
        require("filterpy.kalman")  # fail at construction, with the pip line, not at the first object
        require("scipy.optimize")

    def _similarity(self, tracks: list[_Track], inst: Instances, det: np.ndarray) -> np.ndarray:
        s = self.settings
        if not tracks or len(det) == 0:
            return np.zeros((len(tracks), len(det)))
        sim = box_iou(np.stack([t.predicted_box() for t in tracks]), inst.boxes[det])
        if s.per_class:
            sim *= np.array([t.class_id for t in tracks])[:, None] == inst.class_ids[det][None, :]
        if s.mask_weight > 0:
            for i, j in zip(*np.nonzero(sim > 0)):
                crop, x, y = tracks[i].moved_crop()
                dcrop, dx, dy = _mask_crop(inst.masks[det[j]], inst.boxes[det[j]])
                sim[i, j] = (1 - s.mask_weight) * sim[i, j] + s.mask_weight * _crop_iou(crop, x, y, dcrop, dx, dy)
        return sim

    def _match(self, tracks: list[_Track], inst: Instances, det: np.ndarray) -> list[tuple[int, int]]:
        """``(track index, detection index into det)`` pairs: optimal assignment above ``match_thresh``."""
        sim = self._similarity(tracks, inst, det)
        if sim.size == 0:
            return []
        linear_sum_assignment = require("scipy.optimize").linear_sum_assignment
        rows, cols = linear_sum_assignment(sim, maximize=True)
        return [(int(r), int(c)) for r, c in zip(rows, cols) if sim[r, c] >= self.settings.match_thresh]

    def _apply(self, track: _Track, inst: Instances, d: int) -> None:
        track.kf.update(_cxcywh(inst.boxes[d]))
        crop, x, y = _mask_crop(inst.masks[d], inst.boxes[d])
        track.crop, track.crop_xy, track.center = crop, (x, y), tuple(_cxcywh(inst.boxes[d])[:2])
        track.hits, track.misses = track.hits + 1, 0
        if track.track_id < 0 and track.hits >= self.settings.min_hits:
            track.track_id, self._next_id = self._next_id, self._next_id + 1

    def _new_track(self, inst: Instances, d: int) -> _Track:
        crop, x, y = _mask_crop(inst.masks[d], inst.boxes[d])
        t = _Track(_kalman(inst.boxes[d]), int(inst.class_ids[d]), crop, (x, y), tuple(_cxcywh(inst.boxes[d])[:2]))
        if self.settings.min_hits <= 1:
            t.track_id, self._next_id = self._next_id, self._next_id + 1
        return t

    def update(self, instances: Instances) -> TrackUpdate:
        """Associate one frame's detections; see the module docstring for the steps."""
        s = self.settings
        for t in self.tracks:
            t.predict()
        high = np.nonzero(instances.scores >= s.high_score)[0]
        low = np.nonzero(instances.scores < s.high_score)[0]
        owner = np.full(len(instances), -1, np.int64)  # detection -> index into self.tracks
        for ti, j in self._match(self.tracks, instances, high):
            owner[high[j]] = ti
        free = [i for i in range(len(self.tracks)) if i not in set(owner[owner >= 0].tolist())]
        # stage 2: low-scoring detections only for tracks that are already confirmed
        free_confirmed = [i for i in free if self.tracks[i].track_id >= 0]
        for k, j in self._match([self.tracks[i] for i in free_confirmed], instances, low):
            owner[low[j]] = free_confirmed[k]
        for d in np.nonzero(owner >= 0)[0]:
            self._apply(self.tracks[owner[d]], instances, int(d))
        matched = set(owner[owner >= 0].tolist())
        kept, ended = [], []
        for i, t in enumerate(self.tracks):
            if i not in matched:
                t.misses += 1
                if t.track_id < 0 or t.misses > s.buffer_frames:
                    ended += [t.track_id] if t.track_id >= 0 else []
                    continue
            kept.append(t)
        ids = np.array([self.tracks[o].track_id if o >= 0 else -1 for o in owner], np.int64)
        for d in high[owner[high] < 0]:
            kept.append(self._new_track(instances, int(d)))
            ids[d] = kept[-1].track_id
        self.tracks = kept
        extra = dict(instances.extra, **{TRACK_IDS: ids})
        out = Instances(boxes=instances.boxes, masks=instances.masks, scores=instances.scores,
                        class_ids=instances.class_ids, labels=instances.labels, image_size=instances.image_size, extra=extra)
        return TrackUpdate(out, tuple(ended))

    def finish(self) -> tuple[int, ...]:
        """End every track (the video is over); returns the confirmed ids that were still open."""
        ids = tuple(t.track_id for t in self.tracks if t.track_id >= 0)
        self.tracks = []
        return ids
