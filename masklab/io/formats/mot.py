"""MOTChallenge text files (``<name>.mot.txt``): one tracked box per line, the format MOT tools read.

Each line is ``frame,id,bb_left,bb_top,bb_width,bb_height,conf,x,y,z`` (MOT15/16/17 results format):
``frame`` counts from 1 (masklab's video frame index + 1), ``id`` is a positive track id, the box is in
pixels (left, top, width, height of the xyxy box) with MOTChallenge's 1-based left/top (masklab's
0-based ``x1 + 1``; :func:`read_mot` and motmetrics' loader subtract the 1 again), ``conf`` the
detection score, and ``x,y,z`` are ``-1`` (no world coordinates). Rows are sorted by frame, then id. ``motmetrics.io.loadtxt`` and
TrackEval read these files as they are.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from masklab.errors import UsageError
from masklab.io.atomic import atomic_write_text

__all__ = ["MotRow", "write_mot", "read_mot"]


@dataclass(frozen=True)
class MotRow:
    """One tracked box: ``frame`` >= 1, ``track_id`` >= 1, ``x, y, w, h`` (left, top, width, height) in
    masklab's 0-based pixel coordinates (the file holds ``x + 1, y + 1``), ``score`` in [0, 1]."""

    frame: int
    track_id: int
    x: float
    y: float
    w: float
    h: float
    score: float = 1.0

    def line(self) -> str:
        return f"{self.frame},{self.track_id},{self.x + 1:.2f},{self.y + 1:.2f},{self.w:.2f},{self.h:.2f},{self.score:.4f},-1,-1,-1"


def write_mot(path: str | os.PathLike, rows: Iterable[MotRow]) -> Path:
    """Write ``rows`` (any order) to ``path`` atomically, sorted by frame then id."""
    rows = sorted(rows, key=lambda r: (r.frame, r.track_id))
    bad = [r for r in rows if r.frame < 1 or r.track_id < 1]
    if bad:
        raise UsageError(f"MOT rows need frame >= 1 and id >= 1; found {bad[0]}")
    return atomic_write_text(path, "".join(r.line() + "\n" for r in rows))


def read_mot(path: str | os.PathLike) -> list[MotRow]:
    """Read a MOTChallenge text file (comma or whitespace separated; the first 7 columns are used, a
    missing ``conf`` reads as 1)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such MOT file")
    rows = []
    for n, raw in enumerate(path.read_text().splitlines(), start=1):
        if not raw.strip():
            continue
        parts = raw.replace(",", " ").split()
        try:
            frame, tid = int(float(parts[0])), int(float(parts[1]))
            x, y, w, h = (float(v) for v in parts[2:6])
            x, y = x - 1, y - 1  # MOTChallenge's left/top are 1-based
            score = float(parts[6]) if len(parts) > 6 else 1.0
        except (ValueError, IndexError):
            raise UsageError(f"{path}:{n}: expected frame,id,left,top,width,height[,conf,...], found {raw!r}") from None
        rows.append(MotRow(frame, tid, x, y, w, h, score))
    return rows
