"""Pictures of an evaluation: precision-recall curves and the confusion matrix (matplotlib, Agg).

Each ``*_figure`` function returns a matplotlib ``Figure`` (so tests can map data coordinates to pixels
with ``ax.transData`` once the figure is saved, which fixes its layout); :func:`save_figure` writes it as PNG
atomically at the figure's own dpi.
"""

from __future__ import annotations

import io
import os

import numpy as np

from masklab.errors import MissingDependencyError

__all__ = ["pr_figure", "confusion_figure", "calibration_figure", "save_figure", "require_matplotlib", "PR_STYLES"]

#: IoU threshold -> (colour, line width) of a precision-recall curve. The IoU 0.50 curve is drawn wide
#: and under the 0.75 one, so where they coincide both stay visible.
PR_STYLES = {0.5: ("#1f77b4", 5.0), 0.75: ("#ff7f0e", 1.8)}

def require_matplotlib():
    """Import matplotlib with the Agg backend (no display needed); MissingDependencyError if absent."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MissingDependencyError("evaluation pictures need matplotlib: pip install 'masklab[plot]'") from e
    return Figure


def pr_figure(curves: dict[tuple[str, float], np.ndarray], recall: np.ndarray, *, title: str,
              ap: dict[tuple[str, float], float | None] | None = None):
    """Precision-recall plots: one panel per IoU type (``fig.axes``: mask first, then box).

    Args:
        curves: ``{(iou_type, iou): precision}`` with ``iou_type`` "segm" or "bbox", precision float (R,)
            over ``recall`` (R,) in [0, 1]; negative values (pycocotools' "undefined") are not drawn.
            Colours and widths from :data:`PR_STYLES`.
        recall: float (R,), the recall thresholds (COCO: 0, 0.01, ..., 1).
        title: the figure title; ap: optional ``{key: AP}`` shown in the legend.
    """
    Figure = require_matplotlib()
    types = [t for t in ("segm", "bbox") if any(k[0] == t for k in curves)]
    fig = Figure(figsize=(4.2 * max(len(types), 1), 4.0), dpi=100, layout="constrained")
    axes = fig.subplots(1, max(len(types), 1), squeeze=False)[0]
    for ax, iou_type in zip(axes, types):
        keys = sorted((k for k in curves if k[0] == iou_type), key=lambda k: k[1])
        for key in keys:
            prec = np.asarray(curves[key], dtype=float)
            if not (prec >= 0).any():
                continue
            colour, width = PR_STYLES.get(key[1], ("#555555", 1.5))
            name = f"IoU={key[1]:.2f}"
            if ap is not None and ap.get(key) is not None:
                name += f" (AP {ap[key]:.3f})"
            ax.plot(recall, np.where(prec >= 0, prec, np.nan), color=colour, linewidth=width, label=name)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title("masks" if iou_type == "segm" else "boxes", fontsize=10)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=8)
        else:
            ax.text(0.5, 0.5, "no ground truth", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(title, fontsize=11)
    return fig


def confusion_figure(matrix: np.ndarray, labels: list[str], *, title: str):
    """The confusion matrix as a grid: cell colour = share of its row (row-normalised), text = count.

    ``matrix`` int (K+1, K+1), rows ground truth, columns prediction, last row/column "background".
    The colour of cell (i, j) is ``Blues(matrix[i, j] / matrix[i].sum())`` (white for an empty row).
    """
    Figure = require_matplotlib()
    from matplotlib import colormaps

    m = np.asarray(matrix, dtype=float)
    n = len(labels)
    rows = m.sum(axis=1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    side = min(max(4.0, 0.55 * n + 2.5), 24.0)
    fig = Figure(figsize=(side, side), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(share, cmap=colormaps["Blues"], vmin=0.0, vmax=1.0, interpolation="nearest")
    fontsize = 9 if n <= 12 else 6
    for i in range(n):
        for j in range(n):
            if m[i, j]:
                ax.text(j, i, str(int(m[i, j])), ha="center", va="center", fontsize=fontsize,
                        color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), labels, rotation=60, ha="left", fontsize=fontsize)
    ax.set_yticks(range(n), labels, fontsize=fontsize)
    ax.xaxis.tick_top()
    ax.xaxis.set_label_position("top")
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    fig.suptitle(title, fontsize=10)
    return fig


def calibration_figure(bins: list[dict], *, title: str):
    """Mask quality calibration: mean true IoU (y) against mean quality (x) per quality bin, marker area
    ~ the bin's count, and the diagonal (a calibrated quality lies on it). ``bins`` as
    :func:`masklab.evaluation.mask_quality.calibration_bins` returns them."""
    Figure = require_matplotlib()
    full = [b for b in bins if b["count"]]
    fig = Figure(figsize=(4.2, 4.0), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="#999999", linewidth=1, linestyle="--", label="calibrated")
    if full:
        x = [b["mean_quality"] for b in full]
        y = [b["mean_iou"] for b in full]
        top = max(b["count"] for b in full)
        ax.plot(x, y, color="#1f77b4", linewidth=1.5)
        ax.scatter(x, y, s=[20 + 180 * b["count"] / top for b in full], color="#1f77b4", label="mean true IoU per bin")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("mask quality")
    ax.set_ylabel("true mask IoU")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig


def save_figure(fig, path: str | os.PathLike) -> None:
    """Write ``fig`` as PNG atomically, at its own dpi (pixel = display coordinate, y flipped)."""
    from masklab.io.atomic import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    atomic_write_bytes(path, buf.getvalue())
