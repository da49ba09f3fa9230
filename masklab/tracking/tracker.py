"""`MaskTracker`: ByteTrack-style multi-object tracking on boxes *and* masks, one id space, per-class tracks.

Why our own association step: the maintained permissive trackers match on box IoU only and are
class-agnostic (``trackers``' ``ByteTrackTracker``; supervision's ``ByteTrack`` moved there), and the
``trackers`` package requires ``opencv-python``, which clashes with masklab's ``opencv-python-headless``.
The motion model is filterpy's :class:`~filterpy.kalman.KalmanFilter` (constant velocity on the box
centre and size, SORT's noise settings); the assignment is scipy's ``linear_sum_assignment``. What is
ours is the similarity and the bookkeeping, per frame:

1. every track's Kalman filter predicts its box; its last mask is moved with the predicted centre;
2. similarity(track, detection) = ``(1 - mask_weight) * box IoU + mask_weight * mask IoU``, times the
   colour similarity ** ``appearance_power`` when the frame image is given (the track's running colour
   histogram against the detection's, :mod:`masklab.tracking.appearance`; below ``appearance_gate`` it
   is 0), and 0 when the classes differ (a track never changes class, so one id never mixes two
   classes' counts);
3. ByteTrack's two stages: detections scoring >= ``high_score`` are matched to all tracks first, the
   lower-scoring ones then only to tracks still unmatched (a partly hidden object keeps its track);
4. a match needs similarity >= ``match_thresh``; an unmatched high-scoring detection starts a
   *tentative* track, unless its mask is mostly covered (``duplicate_cover``) by objects already
   tracked (the same object under a second class, one mask over two objects); a tentative track gets an id after
   ``min_hits`` consecutive matches (until then its detections have id -1 and are never counted);
5. a confirmed track missed for more than ``buffer_frames`` processed frames ends (until then it keeps
   predicting, so an object hidden briefly comes back with its id) and stays *dormant* for
   ``reid_frames`` more;
6. re-identification (DeepSORT/BoT-SORT's idea, with colour for the embedding): a newly confirmed
   track that looks like a lost or dormant track of its class (colour similarity >= ``reid_thresh``,
   reachable from where that one was last seen) takes that track's id instead of a new
   one. So an object that leaves the frame and comes back, or that motion lost in a crossing, gets
   its id back; an ended id (``TrackUpdate.ended``) can therefore come back later.

Ids are positive ints, unique across classes, never reused within one tracker.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from masklab.errors import UsageError
from masklab.optional import require
from masklab.structures.instances import Instances
from masklab.tracking.appearance import color_descriptor, color_similarity

__all__ = ["TrackerSettings", "MaskTracker", "TrackUpdate", "TRACK_IDS"]

#: The ``Instances.extra`` key holding the track ids: int64 (N,), -1 = not (yet) tracked.
TRACK_IDS = "track_ids"


@dataclass(frozen=True)
class TrackerSettings:
    """How :class:`MaskTracker` associates; the defaults and why.

    - ``buffer_frames`` (30, >= 0): processed frames a lost track keeps predicting and can be matched
      by motion (1 s at 30 fps, ByteTrack's default).
    - ``high_score`` (0.6, [0, 1]): ByteTrack's first-stage score; lower detections only extend tracks.
    - ``match_thresh`` (0.2, (0, 1]): least similarity for a match.
    - ``mask_weight`` (0.5, [0, 1]): share of mask IoU in the geometric similarity.
    - ``min_hits`` (2, >= 1): matches before a track gets an id (one-frame false positives get none).
    - ``per_class`` (True): tracks never match another class's detections.
    - ``appearance_gate`` (0.5, [0, 1]): a track and a detection whose colour similarity
      (:mod:`masklab.tracking.appearance`, 1 = same colours) is below this never match: half the
      histogram mass differing is another object or a mask spilling over two, whatever the boxes say.
    - ``appearance_power`` (2.0, >= 0): similarity = geometry x colour ** power, so where two
      detections overlap one track (a crossing, a mask covering two objects), the one that looks
      like it wins; 0 = colour only gates.
    - ``appearance_momentum`` (0.9, [0, 1)): EMA weight of a track's old descriptor (BoT-SORT's); only
      views at least ``reid_thresh`` alike update it.
    - ``duplicate_cover`` (0.7, (0, 1]): an unmatched detection whose mask is covered this much by
      objects already tracked (the frame's matched detections, tracks missed a frame or two) starts no
      track. Mask R-CNN's NMS is per class, so one object seen under a second class, or one mask over
      two objects that touch, would otherwise be born as a ghost track; an object partly hidden behind
      another is not covered (masks are the visible parts), so it still starts one. 1 = off.
    - ``reid_frames`` (300, >= 0): after the motion buffer, an ended track stays *dormant* this many
      more processed frames (10 s at 30 fps); a newly confirmed track of its class that looks like it
      (colour similarity >= ``reid_thresh``) and was born near where it vanished (3 of its sizes plus
      its last speed x frames gone) takes its id back, as does one matching a still-buffered lost
      track that motion failed to find. Needs the frame image. 0 = no re-identification.
    - ``reid_thresh`` (0.85, (0, 1]): the colour similarity re-identification needs; the same object
      scores 0.9-1.0 between views, two merged objects against either about 0.6-0.8.

    Without ``image`` in :meth:`MaskTracker.update` the colour terms are neutral and there is no
    re-identification (the ByteTrack behaviour)."""

    buffer_frames: int = 30
    high_score: float = 0.6
    match_thresh: float = 0.2
    mask_weight: float = 0.5
    min_hits: int = 2
    per_class: bool = True
    appearance_gate: float = 0.5
    appearance_power: float = 2.0
    appearance_momentum: float = 0.9
    duplicate_cover: float = 0.7
    reid_frames: int = 300
    reid_thresh: float = 0.85

    def __post_init__(self) -> None:
        for name in ("buffer_frames", "reid_frames"):
            if getattr(self, name) < 0:
                flag = "--track-buffer" if name == "buffer_frames" else name
                raise UsageError(f"{flag} must be >= 0 frames, found {getattr(self, name)}")
        if self.min_hits < 1:
            raise UsageError(f"min_hits must be >= 1, found {self.min_hits}")
        for name in ("high_score", "mask_weight", "appearance_gate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UsageError(f"{name} must be in [0, 1], found {getattr(self, name)}")
        for name in ("match_thresh", "duplicate_cover", "reid_thresh"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise UsageError(f"{name} must be in (0, 1], found {getattr(self, name)}")
        if not 0.0 <= self.appearance_momentum < 1.0:
            raise UsageError(f"appearance_momentum must be in [0, 1), found {self.appearance_momentum}")
        if self.appearance_power < 0:
            raise UsageError(f"appearance_power must be >= 0, found {self.appearance_power}")


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


def _covered(crop: np.ndarray, x: int, y: int, others: list[tuple[np.ndarray, int, int]]) -> float:
    """Share of the bool crop at ``(x, y)`` that the union of the ``others`` crops covers, in [0, 1]."""
    n = int(np.count_nonzero(crop))
    if n == 0 or not others:
        return 0.0
    union = np.zeros_like(crop)
    for o, ox, oy in others:
        x0, y0 = max(x, ox), max(y, oy)
        x1, y1 = min(x + crop.shape[1], ox + o.shape[1]), min(y + crop.shape[0], oy + o.shape[0])
        if x1 > x0 and y1 > y0:
            union[y0 - y:y1 - y, x0 - x:x1 - x] |= o[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
    return int(np.count_nonzero(union & crop)) / n


@dataclass
class _Track:
    kf: object
    class_id: int
    crop: np.ndarray
    crop_xy: tuple[int, int]
    center: tuple[float, float]
    appearance: np.ndarray | None = None  # EMA of the colour descriptors of its clean matches
    track_id: int = -1
    hits: int = 1
    misses: int = 0
    seen: int = 0  # the tracker's frame number of its last match
    speed: float = 0.0  # px per frame at its last match

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

    def area(self) -> int:
        return int(np.count_nonzero(self.crop))


@dataclass(frozen=True)
class TrackUpdate:
    """One frame's result: ``instances`` (same order as given, masks kept) with ``extra["track_ids"]``;
    ``ended`` the ids of confirmed tracks that ended in this update (lost for longer than the buffer;
    re-identification may give one back to a later detection)."""

    instances: Instances
    ended: tuple[int, ...] = ()


@dataclass
class MaskTracker:
    """Call :meth:`update` once per processed frame, in order; see the module docstring.

    Example:
        >>> tracker = MaskTracker(TrackerSettings(buffer_frames=10))     # doctest: +SKIP
        >>> tracked = tracker.update(instances, image=rgb).instances      # rgb: the frame, for appearance
        >>> tracked.extra["track_ids"]                                    # int64 (N,), -1 = untracked
    """

    settings: TrackerSettings = field(default_factory=TrackerSettings)
    tracks: list[_Track] = field(default_factory=list)
    dormant: list[_Track] = field(default_factory=list)  # ended tracks kept for re-identification
    _next_id: int = 1
    _frame: int = 0

    def __post_init__(self) -> None:
        require("filterpy.kalman")  # fail at construction, with the pip line, not at the first object
        require("scipy.optimize")

    def _similarity(self, tracks: list[_Track], inst: Instances, det: np.ndarray, desc: list, crops: list) -> np.ndarray:
        s = self.settings
        if not tracks or len(det) == 0:
            return np.zeros((len(tracks), len(det)))
        sim = box_iou(np.stack([t.predicted_box() for t in tracks]), inst.boxes[det])
        if s.per_class:
            sim *= np.array([t.class_id for t in tracks])[:, None] == inst.class_ids[det][None, :]
        for i, j in zip(*np.nonzero(sim > 0)):
            if s.mask_weight > 0:
                crop, x, y = tracks[i].moved_crop()
                dcrop, dx, dy = crops[det[j]]
                sim[i, j] = (1 - s.mask_weight) * sim[i, j] + s.mask_weight * _crop_iou(crop, x, y, dcrop, dx, dy)
            look = color_similarity(tracks[i].appearance, desc[det[j]])
            sim[i, j] = 0.0 if look < s.appearance_gate else sim[i, j] * look ** s.appearance_power
        return sim

    def _match(self, tracks: list[_Track], inst: Instances, det: np.ndarray, desc: list, crops: list) -> list[tuple[int, int]]:
        """``(track index, detection index into det)`` pairs: optimal assignment above ``match_thresh``."""
        sim = self._similarity(tracks, inst, det, desc, crops)
        if sim.size == 0:
            return []
        linear_sum_assignment = require("scipy.optimize").linear_sum_assignment
        rows, cols = linear_sum_assignment(sim, maximize=True)
        return [(int(r), int(c)) for r, c in zip(rows, cols) if sim[r, c] >= self.settings.match_thresh]

    def _observe(self, track: _Track, inst: Instances, d: int, desc: np.ndarray | None, crop_xy: tuple) -> None:
        """Take detection ``d`` as the track's new observation: mask, frame, speed and appearance."""
        crop, x, y = crop_xy
        track.crop, track.crop_xy, track.center = crop, (x, y), tuple(_cxcywh(inst.boxes[d])[:2])
        track.seen, track.speed = self._frame, float(np.hypot(track.kf.x[4, 0], track.kf.x[5, 0]))
        if desc is None:
            return
        if track.appearance is None:
            track.appearance = desc
        elif color_similarity(track.appearance, desc) >= self.settings.reid_thresh:
            # only clean views update it: a mask that covers a neighbour too would teach it the neighbour
            m = self.settings.appearance_momentum
            track.appearance = m * track.appearance + (1 - m) * desc

    def _apply(self, track: _Track, inst: Instances, d: int, desc: np.ndarray | None, crop_xy: tuple) -> bool:
        """Update a matched track; True when this match confirms it (it needs an id)."""
        track.kf.update(_cxcywh(inst.boxes[d]))
        self._observe(track, inst, d, desc, crop_xy)
        track.hits, track.misses = track.hits + 1, 0
        return track.track_id < 0 and track.hits >= self.settings.min_hits

    def _new_track(self, inst: Instances, d: int, desc: np.ndarray | None, crop_xy: tuple) -> _Track:
        crop, x, y = crop_xy
        t = _Track(_kalman(inst.boxes[d]), int(inst.class_ids[d]), crop, (x, y), tuple(_cxcywh(inst.boxes[d])[:2]))
        self._observe(t, inst, d, desc, crop_xy)
        return t

    def _descriptors(self, inst: Instances, image: np.ndarray | None, crops: list) -> list:
        s = self.settings
        if image is None or (s.appearance_gate <= 0 and s.appearance_power <= 0 and s.reid_frames <= 0):
            return [None] * len(inst)  # no colour term can change anything: skip the histograms
        image = np.asarray(image)
        if image.shape[:2] != tuple(inst.image_size) or image.ndim != 3 or image.dtype != np.uint8:
            raise UsageError(f"MaskTracker.update: expected image RGB uint8 (H, W, 3) with (H, W) = "
                             f"{tuple(inst.image_size)}, found {image.dtype} {image.shape}")
        return [color_descriptor(image, *crop) for crop in crops]

    def _explained(self, inst: Instances, d: int, taken: list[int], crops: list) -> bool:
        """Whether detection ``d``'s mask is mostly (>= ``duplicate_cover``) covered by objects already
        tracked: the ``taken`` detections' masks, and the predicted masks of confirmed tracks missed for
        a frame or two (an object whose class the detector flipped meanwhile)."""
        if self.settings.duplicate_cover >= 1.0:
            return False
        crop, x, y = crops[d]
        others = [crops[k] for k in taken
                  if box_iou(inst.boxes[d], inst.boxes[k])[0, 0] > 0]
        others += [t.moved_crop() for t in self.tracks if t.track_id >= 0 and 0 < t.misses <= 2]
        return _covered(crop, x, y, others) >= self.settings.duplicate_cover

    def _reidentify(self, new: list[_Track]) -> None:
        """Give each newly confirmed track an id: a lost (or dormant) track's that it matches, else a new one.

        A candidate has the same class, a colour similarity >= ``reid_thresh``, and was last seen where
        the new one could have come from: within 3 of its sizes plus its last speed times the frames
        since. No size test: an object coming back is often partly hidden (by the frame's edge or what
        hid it). Best colour similarity first."""
        pairs = []
        lost = [] if self.settings.reid_frames <= 0 else [t for t in self.tracks if t.track_id >= 0 and t.misses > 0] + self.dormant
        for a, t in enumerate(new):
            for b, old in enumerate(lost):
                if old.class_id != t.class_id or t.appearance is None or old.appearance is None:
                    continue
                look = color_similarity(t.appearance, old.appearance)
                reach = 3.0 * np.sqrt(max(old.area(), 1)) + old.speed * (self._frame - old.seen)
                far = np.hypot(t.center[0] - old.center[0], t.center[1] - old.center[1])
                if look >= self.settings.reid_thresh and far <= reach:
                    pairs.append((look, a, b))
        used_new, used_old = set(), set()
        for _, a, b in sorted(pairs, reverse=True):
            if a not in used_new and b not in used_old:
                used_new.add(a), used_old.add(b)
                new[a].track_id = lost[b].track_id
        gone = {id(lost[b]) for b in used_old}
        self.tracks = [t for t in self.tracks if id(t) not in gone]
        self.dormant = [t for t in self.dormant if id(t) not in gone]
        for a, t in enumerate(new):
            if a not in used_new:
                t.track_id, self._next_id = self._next_id, self._next_id + 1

    def update(self, instances: Instances, *, image: np.ndarray | None = None) -> TrackUpdate:
        """Associate one frame's detections; ``image`` (RGB uint8 (H, W, 3), the frame they come from)
        enables the appearance cue and re-identification. See the module docstring for the steps."""
        s = self.settings
        self._frame += 1
        for t in self.tracks:
            t.predict()
        # each detection's mask cropped to its box, once per frame: matching, births, appearance use it
        crops = [_mask_crop(instances.masks[d], instances.boxes[d]) for d in range(len(instances))]
        desc = self._descriptors(instances, image, crops)
        high = np.nonzero(instances.scores >= s.high_score)[0]
        low = np.nonzero(instances.scores < s.high_score)[0]
        owner: dict[int, _Track] = {}  # detection -> its track
        for ti, j in self._match(self.tracks, instances, high, desc, crops):
            owner[int(high[j])] = self.tracks[ti]
        # stage 2: low-scoring detections only for tracks that are already confirmed
        taken = {id(t) for t in owner.values()}
        free_confirmed = [t for t in self.tracks if id(t) not in taken and t.track_id >= 0]
        for k, j in self._match(free_confirmed, instances, low, desc, crops):
            owner[int(low[j])] = free_confirmed[k]
        confirmed = [t for d, t in owner.items() if self._apply(t, instances, d, desc[d], crops[d])]
        matched = {id(t) for t in owner.values()}
        kept, ended = [], []
        for t in self.tracks:
            if id(t) not in matched:
                t.misses += 1
                if t.track_id < 0:
                    continue
                if t.misses > s.buffer_frames:
                    ended.append(t.track_id)
                    self.dormant.append(t)
                    continue
            kept.append(t)
        self.tracks = kept
        for d in sorted((int(d) for d in high if int(d) not in owner), key=lambda d: -instances.scores[d]):
            if not self._explained(instances, d, list(owner), crops):
                owner[d] = self._new_track(instances, d, desc[d], crops[d])
                self.tracks.append(owner[d])
                confirmed += [owner[d]] if s.min_hits <= 1 else []
        self._reidentify(confirmed)
        self.dormant = [t for t in self.dormant if self._frame - t.seen <= s.buffer_frames + s.reid_frames]
        ids = np.array([owner[d].track_id if d in owner else -1 for d in range(len(instances))], np.int64)
        extra = dict(instances.extra, **{TRACK_IDS: ids})
        out = Instances(boxes=instances.boxes, masks=instances.masks, scores=instances.scores,
                        class_ids=instances.class_ids, labels=instances.labels, image_size=instances.image_size, extra=extra)
        return TrackUpdate(out, tuple(ended))

    def finish(self) -> tuple[int, ...]:
        """End every track (the video is over); returns the confirmed ids that were still open."""
        ids = tuple(t.track_id for t in self.tracks if t.track_id >= 0)
        self.tracks, self.dormant = [], []
        return ids
