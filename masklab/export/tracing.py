"""What the exported core's graph does differently from torchvision's traced code: the same values, less work.

torchvision writes two of its detection helpers for ONNX tracing in ways that cost an OpenVINO CPU run
real time without changing any value. While :func:`masklab.export.trace_core` traces, both are swapped
for equivalents (:func:`traceable_heads`); eager torchvision is never touched outside that block. A third
change is made on the converted OpenVINO model (:func:`stop_nms_early`).
Measured with OpenVINO's per-layer profile (``PERF_COUNT``; ``maskrcnn_resnet50_fpn_v2`` at 800 px,
1000 proposals, 100 detections, idle 2-core EPYC Zen 4):

- **Batched NMS without its empty-input branch.** Scripted under tracing, ``if boxes.numel() == 0``
  becomes two OpenVINO ``If`` nodes: ~0.3 s per image (~5% of fp32, ~9% of int8).
- **Merging the RoI pooler's levels with one gather.** ``_onnx_merge_levels`` fills a zero tensor of
  every RoI's features (1000 x 256 x 7 x 7 floats: 50 MB) by one ``ScatterElementsUpdate`` per FPN level,
  each with an index tensor expanded to the features' full shape: ~45 ms of fp32 for the two poolers
  (zeros, expand, scatter and their layout reorders). Concatenating the levels' results in level order
  and gathering the rows back into RoI order moves the same numbers once.
- **NMS told how many boxes are kept** (OpenVINO only): see :func:`stop_nms_early`; -0.4 s per fp32 image
  at score threshold 0.
"""

from __future__ import annotations

import contextlib

from masklab.optional import require

__all__ = ["traceable_heads", "merge_levels", "stop_nms_early"]


def merge_levels(levels, unmerged_results):
    """RoI features back in RoI order: ``levels`` int64 (R,), the FPN level of each RoI;
    ``unmerged_results[k]`` float (R_k, C, S, S), the RoIs of level k in their original order. Returns
    float (R, C, S, S), equal to torchvision's ``_onnx_merge_levels``."""
    import torch

    order = torch.cat([torch.where(levels == k)[0] for k in range(len(unmerged_results))])  # (R,)
    positions = torch.ones_like(order).cumsum(0) - 1  # 0..R-1, traced with a dynamic R
    inverse = torch.zeros_like(order).scatter(0, order, positions)  # row of each RoI in the concatenation
    return torch.cat(unmerged_results)[inverse]


def _batched_nms_without_branch(boxes, scores, idxs, iou_threshold: float):
    """torchvision's per-class offset trick for batched NMS, without the ``numel() == 0`` branch: the
    maximum over the coordinates and one 0 gives the same offset for every non-empty input (the boxes
    are clipped to the image, so >= 0) and an empty result for an empty one."""
    import torch
    import torchvision.ops.boxes as tv_boxes

    max_coordinate = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)]).max()
    offsets = idxs.to(boxes) * (max_coordinate + 1)
    return tv_boxes.nms(boxes + offsets[:, None], scores, iou_threshold)


@contextlib.contextmanager
def traceable_heads():
    """While tracing: torchvision's batched NMS and RoI level merge replaced by the equivalents above."""
    import torchvision.ops.boxes as tv_boxes
    import torchvision.ops.poolers as tv_poolers

    saved = tv_boxes._batched_nms_coordinate_trick, tv_poolers._onnx_merge_levels
    tv_boxes._batched_nms_coordinate_trick = _batched_nms_without_branch
    tv_poolers._onnx_merge_levels = merge_levels
    try:
        yield
    finally:
        tv_boxes._batched_nms_coordinate_trick, tv_poolers._onnx_merge_levels = saved


def stop_nms_early(model, limits: dict[str, int]) -> None:
    """Give each ``NonMaxSuppression`` of the module scope named by a key of ``limits`` (its name's first
    part, ``__module.rpn/...`` or ``...RegionProposalNetwork::rpn/...`` as the trace spelled it) that many
    outputs at most.

    torchvision keeps the first ``detections_per_img`` boxes NMS selects (the RPN: ``post_nms_top_n``) and
    drops the rest; the converted op, told nothing, selects every box first. Greedy NMS selects in score
    order, so its first K are the same whether or not it goes on: limited, it stops there. With every
    class's scores >= 0 (score threshold 0: 1000 proposals x 90 classes = 90 000 candidates) the box
    head's NMS took 185 ms of an int8 image's 1.18 s (OpenVINO's per-layer profile, 2-core Zen 4)."""
    import numpy as np

    ov = require("openvino")
    for op in model.get_ops():
        if op.get_type_name() != "NonMaxSuppression":
            continue
        scope = op.get_friendly_name().split("/")[0]
        k = next((v for name, v in limits.items() if scope.endswith((f".{name}", f":{name}"))), None)
        if k is None:
            continue
        current = op.input_value(2)
        limit = ov.opset13.constant(np.array([int(k)], dtype=current.get_element_type().to_dtype()))
        op.input(2).replace_source_output(limit.output(0))
    model.validate_nodes_and_infer_types()
