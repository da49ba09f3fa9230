"""How Mask R-CNN works, drawn from your own image: one picture per stage of a :class:`~masklab.inference.explain.Trace`.

    >>> from masklab.explain import explain_to               # doctest: +SKIP
    >>> result = explain_to(seg, "photo.jpg", out="explain/")  # 8 PNGs + explain/index.html

Pictures (each a PNG with a plain-words caption and the counts of this image): 1 input tensor, 2 feature
maps, 3 anchors, 4 RPN, 5 RoI pooling vs RoIAlign, 6 box head, 7 mask head, 8 final overlay. Needs
matplotlib (``pip install 'masklab[plot]'``).
"""

from __future__ import annotations

import os
from typing import Any

from masklab.explain._figure import Picture
from masklab.explain.early import anchors_picture, features_picture, input_picture, rpn_picture
from masklab.explain.late import (
    best_proposals,
    box_head_picture,
    mask_picture,
    overlay_picture,
    roi_picture,
    roi_pool_crop,
)
from masklab.explain.page import Explanation, render_html, write_pages
from masklab.inference.explain import Trace

__all__ = ["Picture", "Explanation", "pictures", "write_explanation", "explain_to", "render_html",
           "roi_pool_crop", "best_proposals", "STAGES"]

#: the pictures, in order
STAGES = (input_picture, features_picture, anchors_picture, rpn_picture, roi_picture, box_head_picture,
          mask_picture, overlay_picture)


def pictures(trace: Trace) -> list[Picture]:
    """Every stage's picture of ``trace``, in order."""
    return [stage(trace) for stage in STAGES]


def write_explanation(trace: Trace, out: str | os.PathLike) -> Explanation:
    """Draw ``trace`` into the folder ``out`` (PNGs, ``index.html``, ``counts.json``)."""
    h, w = trace.input.original.shape[:2]
    intro = (f"One {w}x{h} image through {trace.model}, stage by stage, recorded from the real forward pass "
             f"({trace.note}). Counts: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in trace.counts().items()))
    return write_pages(pictures(trace), out, title=f"How Mask R-CNN works: {trace.model}", intro=intro,
                       counts=trace.counts())


def explain_to(segmenter: Any, image: Any, *, out: str | os.PathLike) -> Explanation:
    """``segmenter.explain(image)`` drawn into ``out``."""
    return write_explanation(segmenter.explain(image), out)
