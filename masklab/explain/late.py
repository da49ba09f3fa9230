"""Pictures 5-8: RoI pooling vs RoIAlign, the box head, the mask head, the final overlay."""

from __future__ import annotations

import numpy as np

from masklab.explain._figure import Picture, channel_mean, draw_box, image_axes, new_figure, to_png
from masklab.inference.explain.trace import Trace
from masklab.visualize import class_color, render

__all__ = ["roi_picture", "box_head_picture", "mask_picture", "overlay_picture", "roi_pool_crop", "best_proposals"]

_CROPS = 3
_ARROWS = 8
_MASKS = 6


def best_proposals(trace: Trace, n: int) -> np.ndarray:
    """int64 indices of ``n`` proposals the box head finds most object-like (highest non-background class
    probability), best first, overlapping each other by IoU 0.5 at most (so they show different objects)."""
    import torch
    from torchvision.ops import nms

    p = trace.box_head.class_probs
    if p.shape[0] == 0:
        return np.zeros(0, np.int64)
    fg = torch.from_numpy(p[:, 1:].max(1).astype(np.float32))
    keep = nms(torch.from_numpy(trace.rpn.proposals.astype(np.float32)), fg, 0.5)
    return keep[:n].numpy().astype(np.int64)


def roi_pool_crop(trace: Trace, index: int) -> np.ndarray:
    """float32 (C, P, P): proposal ``index`` cropped with the old RoI pooling (``torchvision.ops.roi_pool``:
    box edges rounded to whole feature cells, max per bin) from the map RoIAlign used, for comparison.
    The model itself does not use it."""
    import torch
    from torchvision.ops import roi_pool

    level = int(trace.roi.levels[index])
    feat = torch.from_numpy(trace.features[level].features)[None]
    box = torch.from_numpy(trace.rpn.proposals[index : index + 1].astype(np.float32))
    out = roi_pool(feat, [box], output_size=trace.roi.output_size, spatial_scale=trace.roi.spatial_scales[level])
    return out[0].numpy()


def roi_picture(trace: Trace) -> Picture:
    picks = best_proposals(trace, _CROPS)
    fig, ax = new_figure(max(len(picks), 1), 3, width=11, height=3.4 * max(len(picks), 1))
    method = "RoIAlign" if trace.roi.method == "roi_align" else "crop-and-resize (matterport's RoIAlign)"
    for row, i in enumerate(picks):
        level = int(trace.roi.levels[i])
        f = trace.features[level]
        s = trace.roi.spatial_scales[level]
        x1, y1, x2, y2 = (float(v) * s for v in trace.rpn.proposals[i])
        m = channel_mean(f.features)
        a = ax[row, 0]
        image_axes(a, m, f"proposal {i} on {f.name} (stride {f.stride})")
        a.images[0].set_cmap("magma")
        draw_box(a, (x1 + 0.5, y1 + 0.5, x2 + 0.5, y2 + 0.5), color="cyan", lw=2)  # exact: cell centres at integers
        q = [round(x1), round(y1), round(x2), round(y2)]
        draw_box(a, (q[0], q[1], q[2] + 1, q[3] + 1), color="white", lw=1.5, ls="--")
        a.set_xlim(max(x1 - 3, -0.5), min(x2 + 3, m.shape[1] - 0.5))
        a.set_ylim(min(y2 + 3, m.shape[0] - 0.5), max(y1 - 3, -0.5))
        pooled, aligned = channel_mean(roi_pool_crop(trace, int(i))), channel_mean(trace.roi.pooled[i])
        for col, (crop, name) in enumerate(((pooled, "RoI pooling (rounded to cells)"), (aligned, method)), 1):
            image_axes(ax[row, col], crop, f"{name}: {crop.shape[0]}x{crop.shape[1]}")
            ax[row, col].images[0].set_cmap("magma")  # each on its own scale: maxima run higher than averages
    if not len(picks):
        ax[0, 0].text(0.5, 0.5, "no proposals", ha="center")
    n = trace.roi.output_size
    caption = (
        f"The box head needs a fixed-size input, so every proposal is cut out of one feature map as a {n}x{n} grid "
        "(large proposals from coarse maps, small ones from fine maps). Left: the proposal on its map, the cyan box "
        "where it really is and the white dashed box where the old RoI pooling puts it after rounding its edges to "
        "whole cells. Middle: RoI pooling's crop (rounded box, rounded bins, the maximum of each bin; each crop has "
        "its own colour scale, since maxima run higher than averages). Right: what "
        f"this model actually uses, {method}: no rounding, each bin sampled by bilinear interpolation at exact "
        "positions. The shift of a fraction of a cell is small on the map but, at this stride, several pixels in the "
        "image: for masks that line up with object edges, Mask R-CNN replaced RoI pooling with RoIAlign."
    )
    title = "5. RoI pooling vs RoIAlign"
    return Picture("5_roi_align", title, caption, to_png(fig, title=title, caption=caption), {"crops_shown": len(picks)})


def _names(trace: Trace, ids) -> list[str]:
    cats = trace.categories
    return ["background" if i == 0 else (cats[i] if i < len(cats) else f"class_{i}") for i in ids]


def _score_table(ax, trace: Trace, picks: np.ndarray) -> None:
    p = trace.box_head.class_probs[picks]
    cols = sorted({int(c) for row in p for c in np.argsort(-row)[:3]})[:10]
    ax.imshow(p[:, cols], cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for r in range(len(picks)):
        for c, k in enumerate(cols):
            ax.text(c, r, f"{p[r, k]:.2f}", ha="center", va="center", fontsize=7, color="black" if p[r, k] < 0.6 else "white")
    ax.set_xticks(range(len(cols)), _names(trace, cols), rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(picks)), [f"proposal {i}" for i in picks], fontsize=7)
    ax.set_title("class probabilities (top classes)", fontsize=9)


def box_head_picture(trace: Trace) -> Picture:
    b = trace.box_head
    img = trace.input.network_image()
    fig, ax = new_figure(1, 4, width=17, height=4.8)
    picks = best_proposals(trace, _ARROWS)
    if len(picks):
        _score_table(ax[0, 0], trace, picks)
    image_axes(ax[0, 1], img, "box refinement: proposal (dashed) -> refined (solid)")
    for i in picks:
        k = 1 + int(np.argmax(b.class_probs[i, 1:]))
        p, r = trace.rpn.proposals[i], b.refined[i, k]
        col = np.array(class_color(k)) / 255
        draw_box(ax[0, 1], p, color=col, ls="--", lw=0.8)
        draw_box(ax[0, 1], r, color=col, lw=1.4)
        (pcx, pcy), (rcx, rcy) = ((p[0] + p[2]) / 2, (p[1] + p[3]) / 2), ((r[0] + r[2]) / 2, (r[1] + r[3]) / 2)
        ax[0, 1].annotate("", (rcx, rcy), (pcx, pcy), arrowprops={"arrowstyle": "->", "color": "white", "lw": 1})
    c = b.counts
    steps = [("candidates", c["candidates"]), (f"score > {b.score_thresh:g}", c["above_threshold"]),
             (f"after NMS {b.nms_thresh:g}", c["after_nms"]), (f"kept (max {b.max_detections})", c["kept"])]
    ys = list(range(len(steps)))[::-1]
    ax[0, 2].barh(ys, [max(v, 0.5) for _, v in steps], color="#9db4f0", log=True)
    ax[0, 2].set_yticks([])
    ax[0, 2].set_xlim(0.5, max(v for _, v in steps) * 4 + 1)
    for y, (name, v) in zip(ys, steps):
        ax[0, 2].text(0.6, y, f"{name}: {v}", va="center", fontsize=9)
    ax[0, 2].set_title("what is kept at each step (log scale)", fontsize=9)
    image_axes(ax[0, 3], img, f"{len(b.boxes)} detections")
    for box, s, k in zip(b.boxes, b.scores, b.class_ids):
        col = np.array(class_color(int(k))) / 255
        draw_box(ax[0, 3], box, color=col, lw=1.6)
        ax[0, 3].text(box[0], box[1], f"{_names(trace, [int(k)])[0]} {s:.2f}", color="white", fontsize=7,
                      va="bottom", bbox={"facecolor": col, "pad": 1, "lw": 0})
    per_roi = "each proposal and class" if trace.roi.method == "roi_align" else "each proposal (its best class)"
    caption = (
        f"The box head reads each proposal's crop and gives two answers: a probability for every class, background "
        f"included (left, for the {len(picks)} most object-like proposals), and a correction that moves the box to "
        "fit that class better (second panel: dashed proposal, solid refined box, arrow between centres). Then the "
        f"results are filtered: of {c['candidates']} candidates ({per_roi}), {c['above_threshold']} score above "
        f"{b.score_thresh:g}; non-maximum suppression within each class (IoU {b.nms_thresh:g}) leaves "
        f"{c['after_nms']}; at most {b.max_detections} are kept, here {c['kept']} (right)."
    )
    title = "6. Box head: classify, refine, filter"
    return Picture("6_box_head", title, caption, to_png(fig, title=title, caption=caption), dict(c))


def mask_picture(trace: Trace) -> Picture:
    m, b = trace.mask, trace.box_head
    n = min(len(m.probs), _MASKS)
    fig, ax = new_figure(2, max(n, 1), width=max(2.6 * n, 6), height=5.6)
    for i in range(n):
        name = _names(trace, [int(b.class_ids[i])])[0]
        image_axes(ax[0, i], m.probs[i], f"{name} {b.scores[i]:.2f}: 28x28")
        ax[0, i].images[0].set_cmap("viridis")
        ax[0, i].images[0].set_clim(0, 1)
        shown = trace.input.original.copy()
        col = np.array(class_color(int(b.class_ids[i])), np.float32)
        sel = m.pasted[i]
        shown[sel] = (0.45 * shown[sel] + 0.55 * col).astype(np.uint8)
        image_axes(ax[1, i], shown, f"pasted: {int(sel.sum())} px")
    if n == 0:
        ax[0, 0].text(0.5, 0.5, "no detections, so no masks", ha="center", va="center")
        ax[0, 0].axis("off")
        ax[1, 0].axis("off")
    caption = (
        f"For each of the {len(m.probs)} detections the mask head looks at its box again (a 14x14 RoIAlign crop) "
        "and predicts a small 28x28 grid: for every cell, the probability that it belongs to the object of the "
        "detected class (top: yellow = sure, dark = not). Each small mask is then stretched to the size of its box "
        f"in your image and cut at probability {m.threshold:g}, which gives the full-resolution masks (bottom). "
        "That is why mask edges are smooth but cannot be sharper than 1/28 of the box."
    )
    title = "7. Mask head: 28x28 masks, pasted"
    return Picture("7_masks", title, caption, to_png(fig, title=title, caption=caption), {"masks": int(len(m.probs))})


def overlay_picture(trace: Trace) -> Picture:
    inst = trace.instances
    fig, ax = new_figure(1, 2, width=12, height=5.4)
    image_axes(ax[0, 0], trace.input.original, "your image")
    image_axes(ax[0, 1], render(trace.input.original, inst, ["instance"]), f"{len(inst)} objects")
    labels = ", ".join(f"{lab} {s:.2f}" for lab, s in zip(inst.labels, inst.scores.tolist())) or "none"
    caption = (
        f"The end result, exactly what the segmenter returns for this image: {len(inst)} objects ({labels}). Boxes "
        "are scaled back to your image's pixels, each mask is the pasted 28x28 mask, and the label is the class "
        f"with the highest probability. Model: {trace.model}; {trace.note}."
    )
    title = "8. Final result"
    return Picture("8_overlay", title, caption, to_png(fig, title=title, caption=caption), {"instances": len(inst)})
