"""Drawing helpers shared by the styles: colours, captions, contours, legends, panels.

Images are RGB uint8 (H, W, 3); positions are pixel ``x, y`` (column, row).
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np

__all__ = ["instance_colors", "class_color", "draw_caption", "draw_contours", "draw_legend", "side_by_side"]

_FONT_SCALE = 0.45


def _font_scale(img: np.ndarray) -> float:
    """Caption font scale for ``img``: 0.45 when the shorter side is 400 px or more, down to 0.3 (the
    smallest size Hershey text stays legible at) from 267 px down, so labels do not bury small images."""
    return _FONT_SCALE * float(np.clip(min(img.shape[:2]) / 400.0, 2.0 / 3.0, 1.0))
_GOLDEN = 0.618033988749895


def instance_colors(n: int, *, seed: int = 0) -> np.ndarray:
    """uint8 (n, 3) distinct bright RGB colours (evenly spaced hues, shuffled by ``seed``)."""
    rng = np.random.default_rng(seed)
    hues = (np.arange(n) / max(n, 1) + rng.random()) % 1.0
    rng.shuffle(hues)
    return np.array([[int(255 * c) for c in colorsys.hsv_to_rgb(h, 0.85, 1.0)] for h in hues], np.uint8).reshape(-1, 3)


def class_color(class_id: int) -> tuple[int, int, int]:
    """The fixed RGB colour of a class id (golden-ratio hue steps: neighbouring ids differ clearly)."""
    h = (int(class_id) * _GOLDEN + 0.07) % 1.0
    s, v = (0.75, 1.0) if int(class_id) % 2 else (0.9, 0.8)
    return tuple(int(255 * c) for c in colorsys.hsv_to_rgb(h, s, v))


def draw_caption(
    img: np.ndarray,
    text: str,
    x: int,
    y: int,
    *,
    color=(255, 255, 255),
    bg=(0, 0, 0),
    avoid: list[tuple[int, int, int, int]] | None = None,
    alt_y: Sequence[int] = (),
) -> tuple[int, int, int, int]:
    """Write ``text`` in place on a filled box whose bottom-left corner is at ``(x, y)`` (just above an
    object's box), moved so the box stays inside the image (white on black reads on any background).

    ``avoid``: boxes ``(x0, y0, x1, y1)`` of captions already drawn; if the box would overlap one, the
    bottom edges in ``alt_y`` are tried in turn. The chosen box is appended to ``avoid`` and returned.
    """
    import cv2

    scale = _font_scale(img)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    h, w = img.shape[:2]
    bw, bh = tw + 4, th + base + 4
    x0 = int(np.clip(x, 0, max(w - bw, 0)))

    def rect(bottom: int) -> tuple[int, int, int, int]:
        y0 = min(max(int(bottom) - bh, 0), max(h - bh, 0))
        return (x0, y0, x0 + bw, y0 + bh)

    def free(r) -> bool:
        return not any(r[0] < a[2] and a[0] < r[2] and r[1] < a[3] and a[1] < r[3] for a in (avoid or ()))

    # then further down, one caption height at a time, as a last resort before overlapping; tried lazily
    # (100 captions on a busy image: 3000 candidate boxes built and thrown away otherwise)
    bottoms = (y, *alt_y, *(y + k * bh for k in range(1, h // max(bh, 1) + 1)))
    box = next((r for r in map(rect, bottoms) if free(r)), rect(y))
    x0, y0 = box[:2]
    cv2.rectangle(img, (x0, y0), (min(x0 + bw, w) - 1, min(y0 + bh, h) - 1), bg, -1)
    cv2.putText(img, text, (x0 + 2, y0 + 2 + th), cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)
    if avoid is not None:
        avoid.append(box)
    return box


def draw_contours(img: np.ndarray, mask: np.ndarray, color, thickness: int = 2) -> None:
    """Draw the outer and hole contours of bool (H, W) ``mask`` in place."""
    import cv2

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(img, contours, -1, tuple(int(v) for v in color), thickness)


def draw_legend(img: np.ndarray, entries: Sequence[tuple[str, tuple[int, int, int]]]) -> None:
    """A colour-swatch legend in the top-left corner, in place (cut off at the image's bottom)."""
    import cv2

    if not entries:
        return
    scale = _font_scale(img)
    sizes = [cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0] for t, _ in entries]
    row = max(th for _, th in sizes) + 8
    width = min(max(tw for tw, _ in sizes) + row + 10, img.shape[1])
    height = min(row * len(entries) + 4, img.shape[0])
    region = img[:height, :width]
    region[:] = (region * 0.35).astype(np.uint8)  # darkened panel: readable over any picture
    for k, (text, color) in enumerate(entries):
        y = 4 + k * row
        if y + row > img.shape[0]:
            break
        cv2.rectangle(img, (4, y + 1), (4 + row - 6, y + row - 5), tuple(int(v) for v in color), -1)
        cv2.putText(img, text, (row + 2, y + row - 7), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)


def side_by_side(panels: Sequence[np.ndarray], titles: Sequence[str] | None = None, *, gap: int = 4) -> np.ndarray:
    """Panels of equal height in one row, ``gap`` white pixels apart, each with a title strip on top
    when ``titles`` is given. Returns RGB uint8 (H [+ title], sum(W) + gaps, 3)."""
    import cv2

    if not panels:
        raise ValueError("side_by_side needs at least one panel")
    h = panels[0].shape[0]
    if any(p.shape[0] != h for p in panels):
        raise ValueError(f"side_by_side: panels must share a height, found {[p.shape[0] for p in panels]}")
    cols = []
    for k, p in enumerate(panels):
        if titles is not None:
            strip = np.full((24, p.shape[1], 3), 255, np.uint8)
            cv2.putText(strip, titles[k], (6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
            p = np.concatenate([strip, p], axis=0)
        cols.append(p)
        if k < len(panels) - 1:
            cols.append(np.full((p.shape[0], gap, 3), 255, np.uint8))
    return np.concatenate(cols, axis=1)
