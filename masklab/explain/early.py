"""Pictures 1-4: the input tensor, the feature maps, the anchors, the Region Proposal Network."""

from __future__ import annotations

import numpy as np

from masklab.explain._figure import (
    Picture,
    channel_mean,
    draw_box,
    feature_rgb,
    image_axes,
    new_figure,
    to_png,
)
from masklab.inference.explain.trace import Trace

__all__ = ["input_picture", "features_picture", "anchors_picture", "rpn_picture", "LEVEL_COLORS"]

LEVEL_COLORS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4")
_TOP_K = 10  # anchors shown before/after refinement
_SHOWN = 100  # proposals shown before/after NMS


def input_picture(trace: Trace) -> Picture:
    s = trace.input
    h, w = s.original.shape[:2]
    y1, x1, y2, x2 = s.window_yxyx
    ph, pw = s.padded_hw
    fig, ax = new_figure(1, 3, width=13, height=4.8)
    image_axes(ax[0, 0], s.original, f"your image: {w}x{h} px")
    image_axes(ax[0, 1], s.network_image(), f"network input: {pw}x{ph} px (image {x2 - x1}x{y2 - y1}, scale {s.scale:.3f})")
    draw_box(ax[0, 1], (x1, y1, x2, y2), color="yellow", lw=2, ls="--")
    lim = float(np.abs(s.network_input[0]).max()) or 1.0
    im = ax[0, 2].imshow(s.network_input[0], cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    ax[0, 2].set_title("red channel after normalising (values around 0)", fontsize=9)
    ax[0, 2].set_xticks([])
    ax[0, 2].set_yticks([])
    fig.colorbar(im, ax=ax[0, 2], fraction=0.046)
    padded = (ph, pw) != (y2 - y1, x2 - x1)
    pad = (f"padding ({pw - (x2 - x1)} columns, {ph - (y2 - y1)} rows, grey here) brings it to {pw}x{ph}" if padded
           else f"it needs no padding to be {pw}x{ph}")
    caption = (
        f"Before anything is learned, the image is prepared. Your {w}x{h} image is resized by a factor of {s.scale:.3f} "
        f"to {x2 - x1}x{y2 - y1} pixels (the yellow dashed box), and {pad}, a size the backbone can halve several "
        "times. Each colour is normalised: the training set's mean colour is subtracted (and, for "
        "torchvision models, divided by its spread), so the numbers the network sees sit around zero, as the "
        "colour bar on the right shows. Every box the model predicts lives in these network-input pixels and is "
        "scaled back to your image at the very end."
    )
    return Picture("1_input", "1. Input: resize, normalise, pad", caption,
                   to_png(fig, title="1. Input: resize, normalise, pad", caption=caption),
                   {"input_height": h, "input_width": w, "network_height": ph, "network_width": pw})


def features_picture(trace: Trace) -> Picture:
    rows = [("backbone", f) for f in trace.backbone] + [("FPN", f) for f in trace.features]
    fig, ax = new_figure(2, len(rows), width=max(2.2 * len(rows), 8), height=5.2)
    for i, (kind, f) in enumerate(rows):
        c, fh, fw = f.features.shape
        image_axes(ax[0, i], feature_rgb(f.features), f"{kind} {f.name}\nstride {f.stride}, {c}x{fh}x{fw}")
        image_axes(ax[1, i], channel_mean(f.features), "channel mean")
        ax[1, i].images[0].set_cmap("magma")
    names = ", ".join(f"{f.name} (stride {f.stride})" for f in trace.features)
    caption = (
        "The backbone is a stack of convolutions that turns pixels into feature maps: each cell describes a patch "
        "of the image, and deeper maps (larger stride, fewer cells) describe larger patches with more abstract "
        "features. The top row shows each map's many channels squeezed into three colours (principal components: "
        "cells with similar colours have similar features); the bottom row is the plain average over channels. "
        f"The Feature Pyramid Network mixes deep maps back into fine ones, giving one map per scale: {names}. "
        "Small objects are later looked at on the fine maps, large ones on the coarse maps."
    )
    title = "2. Backbone and Feature Pyramid Network"
    return Picture("2_features", title, caption, to_png(fig, title=title, caption=caption),
                   {f"cells_{f.name}": int(f.features.shape[1] * f.features.shape[2]) for f in trace.features})


def _location(trace: Trace) -> tuple[float, float]:
    """Where to show one location's anchors: the centre of the best detection, else of the image."""
    if len(trace.box_head.boxes):
        x1, y1, x2, y2 = trace.box_head.boxes[0]
        return (x1 + x2) / 2, (y1 + y2) / 2
    y1, x1, y2, x2 = trace.input.window_yxyx
    return (x1 + x2) / 2, (y1 + y2) / 2


def anchors_picture(trace: Trace) -> Picture:
    levels = trace.anchors
    img = trace.input.network_image()
    cx, cy = _location(trace)
    fig, ax = new_figure(1, len(levels) + 1, width=max(3.0 * (len(levels) + 1), 10), height=3.8)
    styles = ("--", "-", ":")
    for i, lv in enumerate(levels):
        a = ax[0, i]
        gx, gy = round(cx / lv.stride) * lv.stride, round(cy / lv.stride) * lv.stride  # nearest grid point
        image_axes(a, img, f"stride {lv.stride}: {len(lv.cell_anchors)} anchors here\n{lv.count} on this level")
        for j, box in enumerate(lv.cell_anchors):
            ls = styles[j % len(lv.aspect_ratios) % len(styles)]
            draw_box(a, box + np.array([gx, gy, gx, gy]), color=LEVEL_COLORS[i % len(LEVEL_COLORS)], ls=ls, lw=1)
        a.plot([gx], [gy], "w+", ms=8)
        a.set_xlim(-0.5, img.shape[1] - 0.5)
        a.set_ylim(img.shape[0] - 0.5, -0.5)
    b = ax[0, -1]
    counts = [lv.count for lv in levels]
    b.bar(range(len(levels)), counts, color=[LEVEL_COLORS[i % len(LEVEL_COLORS)] for i in range(len(levels))])
    b.set_xticks(range(len(levels)), [f"stride {lv.stride}" for lv in levels], fontsize=8)
    b.set_title(f"anchors per level ({sum(counts)} in all)", fontsize=9)
    for i, c in enumerate(counts):
        b.text(i, c, str(c), ha="center", va="bottom", fontsize=8)
    sizes = ", ".join(sorted({f"{s:g}" for lv in levels for s in lv.sizes}, key=float))
    ratios = ", ".join(f"{r:g}" for r in levels[0].aspect_ratios)
    caption = (
        "Anchors are fixed boxes laid out before the network looks at the image: at every cell of every pyramid "
        f"level there is one box per size and aspect ratio (sizes {sizes} px; height/width ratios {ratios}, drawn "
        "dashed, solid and dotted). Each panel shows the anchors of one level centred at one location (the white "
        "cross, near the best detection); boxes outside the image are simply cut by the frame. The model never "
        f"draws a box from scratch: it scores these {sum(counts)} anchors and nudges the promising ones."
    )
    title = "3. Anchors"
    return Picture("3_anchors", title, caption, to_png(fig, title=title, caption=caption),
                   {f"anchors_stride_{lv.stride}": lv.count for lv in levels})


def _clip(boxes: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    out = boxes.copy()
    out[:, 0::2] = out[:, 0::2].clip(0, hw[1])
    out[:, 1::2] = out[:, 1::2].clip(0, hw[0])
    return out


def _boxes_panel(ax, img, boxes, scores, title) -> None:
    image_axes(ax, img, title)
    top = float(scores.max()) if len(scores) else 1.0
    for box, s in zip(boxes, scores):
        draw_box(ax, box, color="cyan", lw=0.8, alpha=float(np.clip(0.25 + 0.75 * s / (top or 1.0), 0, 1)))
    ax.set_xlim(-0.5, img.shape[1] - 0.5)
    ax.set_ylim(img.shape[0] - 0.5, -0.5)


def rpn_picture(trace: Trace) -> Picture:
    r = trace.rpn
    img = trace.input.network_image()
    hw = trace.input.padded_hw
    n_lv = len(r.objectness)
    cols = max(n_lv, 4)
    fig, ax = new_figure(2, cols, width=3.2 * cols, height=7.2)
    for i in range(cols):
        if i >= n_lv:
            ax[0, i].axis("off")
            continue
        o = r.objectness[i]
        image_axes(ax[0, i], o.max(0), f"objectness, stride {trace.anchors[i].stride}\n(best of {o.shape[0]} anchors per cell)")
        ax[0, i].images[0].set_cmap("inferno")
        ax[0, i].images[0].set_clim(0, 1)
    top = np.argsort(-r.scores, kind="stable")[:_TOP_K]
    _boxes_panel(ax[1, 0], img, r.anchors[top], r.scores[top], f"top {len(top)} anchors by objectness")
    _boxes_panel(ax[1, 1], img, _clip(r.refined[top], hw), r.scores[top], "the same anchors, refined and clipped")
    pre = r.pre_nms_index[np.argsort(-r.scores[r.pre_nms_index], kind="stable")][:_SHOWN]
    _boxes_panel(ax[1, 2], img, _clip(r.refined[pre], hw), r.scores[pre],
                 f"before NMS: {len(r.pre_nms_index)} (best {len(pre)} shown)")
    _boxes_panel(ax[1, 3], img, r.proposals[:_SHOWN], r.proposal_scores[:_SHOWN],
                 f"after NMS: {len(r.proposals)} proposals (best {min(_SHOWN, len(r.proposals))} shown)")
    for i in range(4, cols):
        ax[1, i].axis("off")
    c = r.counts()
    caption = (
        "The Region Proposal Network slides a small network over every pyramid level and answers two questions for "
        "each anchor: is there an object here (top row: bright = likely, per level), and how should the box move "
        "to fit it. Bottom row, left to right: the anchors it is most sure about; the same anchors after its box "
        f"corrections (clipped to the image); the {c['before_nms']} best of all {c['anchors']} anchors, refined; and "
        f"what is left after non-maximum suppression (NMS, IoU {r.nms_thresh:g}) removes boxes that overlap a better "
        f"one: {c['after_nms']} proposals (the model keeps at most {r.post_nms_top_n}). Brighter boxes score higher."
    )
    title = "4. Region Proposal Network"
    return Picture("4_rpn", title, caption, to_png(fig, title=title, caption=caption), c)
