"""Figure helpers: a matplotlib ``Figure`` per picture (no pyplot, so no global state), saved as PNG bytes
with its title and caption drawn under the panels."""

from __future__ import annotations

import io
import textwrap
from dataclasses import dataclass, field

import numpy as np

from masklab.optional import require

__all__ = ["Picture", "new_figure", "to_png", "feature_rgb", "channel_mean", "draw_box", "image_axes"]


@dataclass(frozen=True)
class Picture:
    """One stage's picture: ``name`` (file stem, e.g. ``"4_rpn"``), ``title``, ``caption`` (plain words, with
    the numbers of this image), ``counts`` (what was kept at each step, in order) and ``png`` (bytes)."""

    name: str
    title: str
    caption: str
    png: bytes
    counts: dict[str, int] = field(default_factory=dict)


def new_figure(rows: int, cols: int, *, width: float = 12.0, height: float | None = None):
    """A Figure and its (rows, cols) array of Axes."""
    require("matplotlib")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height if height is not None else width * rows / cols * 0.85))
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False))
    return fig, axes


def to_png(fig, *, title: str, caption: str) -> bytes:
    """The figure with ``title`` on top and ``caption`` (wrapped) underneath, as PNG bytes (100 dpi)."""
    fig.suptitle(title, fontsize=14, fontweight="bold")
    fig.text(0.01, -0.01, textwrap.fill(caption, 150), ha="left", va="top", fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


def image_axes(ax, image: np.ndarray, title: str) -> None:
    """Show RGB uint8 ``image`` (or a 2-D map) on ``ax`` with ``title``, no ticks."""
    ax.imshow(image, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def draw_box(ax, xyxy, *, color, lw: float = 1.2, ls: str = "-", alpha: float = 1.0) -> None:
    """A rectangle for pixel box ``xyxy`` (x2, y2 = right/bottom edges) on an image drawn by ``imshow``
    (whose pixel i spans i - 0.5 .. i + 0.5)."""
    from matplotlib.patches import Rectangle

    x1, y1, x2, y2 = (float(v) for v in xyxy)
    ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, edgecolor=color, lw=lw, ls=ls, alpha=alpha))


def _stretch(x: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(x, [1, 99]) if x.size else (0.0, 1.0)
    return np.clip((x - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)


def feature_rgb(features: np.ndarray) -> np.ndarray:
    """float32 (C, h, w) -> float (h, w, 3) in [0, 1]: the first three principal components of the C
    channels as red, green, blue (each stretched between its 1st and 99th percentile)."""
    c, h, w = features.shape
    x = features.reshape(c, -1).T.astype(np.float64)
    x = x - x.mean(0)
    if min(x.shape) < 3 or not np.any(x):
        return np.zeros((h, w, 3))
    _, vecs = np.linalg.eigh(x.T @ x)  # the C x C covariance: cheaper than an SVD of the (h*w, C) matrix
    pcs = x @ vecs[:, ::-1][:, :3]
    return np.stack([_stretch(pcs[:, i]) for i in range(3)], -1).reshape(h, w, 3)


def channel_mean(features: np.ndarray) -> np.ndarray:
    """float32 (C, h, w) -> float32 (h, w): the mean over channels."""
    return features.mean(0)
