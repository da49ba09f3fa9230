"""Videos of moving shapes with their truth: tracks, line crossings and zone visits, for tracking tests.

Each :class:`Mover` is one solid shape (a class of :data:`~masklab.data.shapes.SHAPE_CLASSES`) that
moves along straight pieces between keyframes ``(frame, x, y)`` (centre in pixels, linear in between)
and is drawn only on frames ``visible`` says (default: from its first keyframe to its last). Later
movers are drawn on top of earlier ones, so a crossing path hides the one below (its mask is then the
visible part only, as in :mod:`masklab.data.shapes`).

The truth comes from the trajectories, not from any detector: ground-truth tracks (MOTChallenge rows,
ids = mover index + 1) and the line crossings of each mover's true centre between the frames it is
visible (:func:`line_truth`), counted in masklab's convention (``in`` = from the left of the arrow
``x1,y1 -> x2,y2`` to its right, as seen on screen; see :mod:`masklab.tracking.counting`).

    >>> clip = benchmark_scene()                                    # doctest: +SKIP
    >>> write_clip("out/shapes.mp4", clip)                          # mp4 + .gt.mot.txt + .gt.counts.json
"""

from __future__ import annotations

import colorsys
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from masklab.data.shapes import SHAPE_CLASSES, _draw
from masklab.errors import UsageError
from masklab.io.atomic import atomic_write_json
from masklab.io.formats.mot import MotRow, write_mot
from masklab.structures.masks import masks_to_boxes

__all__ = ["Mover", "MovingClip", "render", "line_truth", "benchmark_scene", "crossing_scene", "write_clip"]


@dataclass(frozen=True)
class Mover:
    """One shape: ``shape`` in SHAPE_CLASSES, ``half`` its half size in px, ``color`` RGB 0-255,
    ``keys`` ``(frame, x, y)`` keyframes (frames increasing), ``hidden`` frames it is not drawn on
    (e.g. while it is off screen)."""

    shape: str
    half: int
    color: tuple[int, int, int]
    keys: tuple[tuple[int, float, float], ...]
    hidden: frozenset[int] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.shape not in SHAPE_CLASSES:
            raise UsageError(f"Mover.shape: expected one of {SHAPE_CLASSES}, found {self.shape!r}")
        frames = [k[0] for k in self.keys]
        if len(frames) < 1 or frames != sorted(frames):
            raise UsageError(f"Mover.keys: expected keyframes in increasing frame order, found {frames}")

    def center(self, frame: int) -> tuple[float, float] | None:
        """The true centre ``(x, y)`` at ``frame``, or None when the mover is not on screen then."""
        f = [k[0] for k in self.keys]
        if frame < f[0] or frame > f[-1] or frame in self.hidden:
            return None
        x = float(np.interp(frame, f, [k[1] for k in self.keys]))
        y = float(np.interp(frame, f, [k[2] for k in self.keys]))
        return x, y


@dataclass(frozen=True)
class MovingClip:
    """``frames`` uint8 (T, H, W, 3) RGB; ``masks[t]`` bool (n_t, H, W) visible parts of ``ids[t]``
    (mover index + 1) of class ``classes[t]``; ``line`` the counting line ``(x1, y1, x2, y2)``."""

    frames: np.ndarray
    masks: list[np.ndarray]
    ids: list[list[int]]
    classes: list[list[str]]
    movers: tuple[Mover, ...]
    line: tuple[float, float, float, float]
    fps: float


def render(movers: Sequence[Mover], *, size_wh: tuple[int, int], n_frames: int, line, fps: float = 10.0,
           background: tuple[int, int, int] = (70, 80, 90), min_visible_px: int = 30) -> MovingClip:
    """Draw ``n_frames`` frames of ``size_wh`` = (W, H); a mover whose visible part is under
    ``min_visible_px`` pixels (mostly hidden, or off the edge) is left out of that frame's truth."""
    w, h = size_wh
    frames = np.empty((n_frames, h, w, 3), np.uint8)
    all_masks, all_ids, all_classes = [], [], []
    for t in range(n_frames):
        img = frames[t]
        img[:] = background
        masks: list[np.ndarray] = []
        ids: list[int] = []
        for i, mv in enumerate(movers):
            c = mv.center(t)
            if c is None:
                continue
            x, y = int(round(c[0])), int(round(c[1]))
            m = np.zeros((h, w), np.uint8)
            _draw(mv.shape, m, x, y, mv.half, (1,))
            m = m.astype(bool)
            _draw(mv.shape, img, x, y, mv.half, mv.color)
            masks = [old & ~m for old in masks]
            masks.append(m)
            ids.append(i + 1)
        keep = [k for k, m in enumerate(masks) if m.sum() >= min_visible_px]
        all_masks.append(np.stack([masks[k] for k in keep]) if keep else np.zeros((0, h, w), bool))
        all_ids.append([ids[k] for k in keep])
        all_classes.append([movers[ids[k] - 1].shape for k in keep])
    return MovingClip(frames, all_masks, all_ids, all_classes, tuple(movers), tuple(float(v) for v in line), fps)


def _side(line, x: float, y: float) -> float:
    x1, y1, x2, y2 = line
    return (x2 - x1) * (y - y1) - (y2 - y1) * (x - x1)


def line_truth(clip: MovingClip) -> dict:
    """``{"in": {"total": n, "by_class": {...}}, "out": {...}}``: sign changes of each mover's true
    centre side between consecutive frames it is in the truth (the line spans the frame)."""
    counts = {d: {"total": 0, "by_class": {}} for d in ("in", "out")}
    for i, mv in enumerate(clip.movers):
        prev = None
        for t in range(len(clip.frames)):
            if (i + 1) not in clip.ids[t]:
                continue
            s = _side(clip.line, *mv.center(t))
            if prev is not None and s != 0 and np.sign(s) != np.sign(prev):
                d = "in" if s > 0 else "out"
                counts[d]["total"] += 1
                counts[d]["by_class"][mv.shape] = counts[d]["by_class"].get(mv.shape, 0) + 1
            prev = s if s != 0 else prev
    return counts


def crossing_scene(*, n_frames: int = 30) -> MovingClip:
    """A small clip for tests (192 x 128, 10 fps; the line ``96,128 -> 96,0`` points up, so its right is
    the frame's right): a square crossing left to right (``in``), a circle right to left (``out``), a
    triangle that stops before the line (no count)."""
    w, h, last = 192, 128, n_frames - 1
    movers = (
        Mover("square", 14, (230, 200, 40), ((0, 22.0, 36.0), (last, 170.0, 36.0))),
        Mover("circle", 14, (40, 200, 230), ((0, 170.0, 92.0), (last, 22.0, 92.0))),
        Mover("triangle", 14, (230, 60, 60), ((0, 20.0, 64.0), (last // 2, 60.0, 64.0), (last, 60.0, 64.0))),
    )
    return render(movers, size_wh=(w, h), n_frames=n_frames, line=(96.0, float(h), 96.0, 0.0))


def _seeded_colors(rng: np.random.Generator, n: int) -> list[tuple[int, int, int]]:
    """``n`` saturated, bright RGB colours with hues spread round the circle (random start and order)."""
    hues = (rng.uniform(0, 1) + np.arange(n) / n + rng.uniform(-0.3, 0.3, n) / n) % 1.0
    rng.shuffle(hues)
    return [tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(float(hh), float(rng.uniform(0.6, 0.9)),
                                                                    float(rng.uniform(0.8, 1.0)))) for hh in hues]


def benchmark_scene(*, n_frames: int = 120, seed: int | None = None) -> MovingClip:
    """The benchmark clip (256 x 160, 10 fps, the line ``128,160 -> 128,0``: ``in`` = moving right): several classes crossing in
    both directions, a shape that stops before the line, two shapes whose paths cross with a brief
    occlusion, and one that leaves the frame and comes back before crossing.

    ``seed`` None is the reference clip; an int draws a variant of the same story (colours, sizes, rows,
    speeds, where the crossing pair meets and how long the leaver stays away, from
    ``numpy.random.default_rng(seed)``), so a tracker can be checked on more than one clip."""
    w, h, last = 256, 160, n_frames - 1
    rng = np.random.default_rng(seed) if seed is not None else None

    def j(v: float, spread: float) -> float:  # the reference value, or a draw around it
        return v if rng is None else float(v + rng.uniform(-spread, spread))

    colors = ([(230, 200, 40), (40, 200, 230), (230, 60, 60), (200, 90, 220), (120, 230, 90), (250, 150, 60)]
              if rng is None else _seeded_colors(rng, 6))
    sizes = [14, 13, 13, 12, 12, 12] if rng is None else [int(v) for v in rng.integers(11, 15, 6)]
    away0, away1 = (0.25, 0.45) if rng is None else (j(0.25, 0.05), j(0.5, 0.08))
    f_away0, f_away1 = int(away0 * n_frames), int(away1 * n_frames)
    back = int(max(j(0.6, 0.05), away1 + 0.08) * n_frames)
    gone = frozenset(range(f_away0, f_away1))
    cross_y0, cross_y1 = j(40.0, 6.0), j(120.0, 6.0)
    movers = (
        Mover("square", sizes[0], colors[0], ((0, j(24.0, 4), j(30.0, 4)), (last, j(232.0, 4), j(30.0, 4)))),
        Mover("circle", sizes[1], colors[1], ((0, j(232.0, 4), j(130.0, 4)), (last, j(24.0, 4), j(130.0, 4)))),
        Mover("triangle", sizes[2], colors[2], ((0, 20.0, j(80.0, 4)), (last // 2, j(90.0, 10), j(80.0, 4)),
                                                (last, j(90.0, 10), j(80.0, 4)))),
        # two paths that cross (the circle passes over the square for a few frames)
        Mover("square", sizes[3], colors[3], ((0, j(200.0, 10), cross_y0), (last, j(100.0, 10), cross_y1))),
        Mover("circle", sizes[4], colors[4], ((0, j(100.0, 10), cross_y0), (last, j(200.0, 10), cross_y1))),
        # leaves through the bottom edge, comes back, then crosses
        Mover("triangle", sizes[5], colors[5], ((0, 40.0, 120.0), (f_away0, 40.0, 190.0), (f_away1, 40.0, 190.0),
                                                (back, 40.0, 120.0), (last, j(200.0, 10), 120.0)), hidden=gone),
    )
    return render(movers, size_wh=(w, h), n_frames=n_frames, line=(128.0, float(h), 128.0, 0.0))


def gt_rows(clip: MovingClip) -> list[MotRow]:
    """Ground-truth MOTChallenge rows (frames from 1, boxes of the visible masks)."""
    rows = []
    for t, (masks, ids) in enumerate(zip(clip.masks, clip.ids)):
        for box, i in zip(masks_to_boxes(masks), ids):
            x1, y1, x2, y2 = (float(v) for v in box)
            rows.append(MotRow(frame=t + 1, track_id=i, x=x1, y=y1, w=x2 - x1, h=y2 - y1, score=1.0))
    return rows


def write_clip(path: str | os.PathLike, clip: MovingClip) -> Path:
    """Write the clip as ``path`` (mp4v), ``<stem>.gt.mot.txt`` and ``<stem>.gt.counts.json`` (the
    line's name is ``line``, as :func:`masklab.tracking.parse_line` names an unnamed first line)."""
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = clip.frames.shape[1:3]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), clip.fps, (w, h))
    if not vw.isOpened():
        raise UsageError(f"OpenCV cannot write {path} (mp4v)")
    for f in clip.frames:
        vw.write(np.ascontiguousarray(f[..., ::-1]))
    vw.release()
    stem = path.with_suffix("")
    write_mot(Path(f"{stem}.gt.mot.txt"), gt_rows(clip))
    atomic_write_json(Path(f"{stem}.gt.counts.json"), {"lines": {"line": {"xyxy": list(clip.line), **line_truth(clip)}}}, indent=2)
    return path
