"""Record a torchvision ``MaskRCNN``'s forward pass: forward hooks on its own modules, nothing re-run.

The pass is :meth:`masklab.runtime.torch.TorchRuntime.predict` itself (the eager runtime the Segmenter
uses), so the trace's final detections are that runtime's output. What is recorded, and from where:

============================ ==========================================================================
``transform``                output: the normalised, resized, padded batch and the resized size
``backbone.body``            output: the C maps; ``backbone`` output: the FPN maps
``rpn.head``                 output: objectness logits and box deltas per level
``rpn.anchor_generator``     output: every anchor; its ``cell_anchors``, ``sizes``, ``aspect_ratios``
``rpn.filter_proposals``     (a method: wrapped for the call) inputs: refined anchors and objectness;
                             output: the proposals after NMS
``roi_heads.box_roi_pool``   inputs: the proposals; output: the RoIAlign crops
``roi_heads.box_predictor``  output: class logits and box deltas
``roi_heads.mask_predictor`` output: mask logits; ``roi_heads`` output: the detections and 28x28 masks
============================ ==========================================================================

The counts between the box head's steps (score threshold, per-class NMS) are derived from the recorded
tensors with the model's own box coder and thresholds; the detections themselves are the model's.
Hooks are on the module object for the duration of one call: do not trace and predict with the same
module from two threads at once.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any

import numpy as np

from masklab.inference.explain.trace import (
    AnchorLevel,
    BoxHeadStage,
    FeatureLevel,
    InputStage,
    MaskStage,
    RoIStage,
    RPNStage,
)
from masklab.inference.explain.trace import (
    to_numpy as _np,
)
from masklab.runtime.torch import TorchRuntime
from masklab.structures.detections import Detections

__all__ = ["TorchvisionStages", "record_torchvision"]


class _Tape:
    """What the hooks saw, by name (tensors as the modules returned them)."""

    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}

    def hook(self, name: str, *, inputs: bool = False):
        def record(module, args, output):
            self.seen[name] = (args, output) if inputs else output

        return record


@contextmanager
def _hooked(module, tape: _Tape):
    rpn, roi = module.rpn, module.roi_heads
    points = [
        (module.transform, "transform", False), (module.backbone.body, "body", False),
        (module.backbone, "fpn", False), (rpn.head, "rpn_head", False),
        (rpn.anchor_generator, "anchors", False), (roi.box_roi_pool, "box_roi_pool", True),
        (roi.box_predictor, "box_predictor", False), (roi.mask_predictor, "mask_predictor", False),
        (roi, "roi_heads", False),
    ]  # fmt: skip
    handles = [m.register_forward_hook(tape.hook(name, inputs=inp)) for m, name, inp in points]
    original = rpn.filter_proposals

    def filter_proposals(proposals, objectness, image_shapes, num_anchors_per_level):
        out = original(proposals, objectness, image_shapes, num_anchors_per_level)
        tape.seen["filter_proposals"] = ((proposals, objectness, image_shapes, num_anchors_per_level), out)
        return out

    rpn.filter_proposals = filter_proposals  # an instance attribute, shadowing the method for this call
    try:
        yield tape
    finally:
        del rpn.filter_proposals
        for h in handles:
            h.remove()


class TorchvisionStages:
    """The stages of one traced image, built from the hooks' tape (see the module docstring)."""

    def __init__(self, runtime: TorchRuntime, image: np.ndarray, tape: _Tape, detections: Detections) -> None:
        self.module, self.runtime, self.image, self.tape, self.detections = runtime.module, runtime, image, tape, detections
        batch, _ = tape.seen["transform"]
        self.batch_hw = tuple(int(s) for s in batch.tensors.shape[-2:])
        self.resized_hw = tuple(int(s) for s in batch.image_sizes[0])

    def input(self) -> InputStage:
        batch, _ = self.tape.seen["transform"]
        t = self.module.transform
        mean = tuple(float(m) * 255 for m in t.image_mean)
        std = tuple(float(s) * 255 for s in t.image_std)
        h, w = self.resized_hw
        short, long = sorted(self.image.shape[:2])
        scale = min(float(t.min_size[-1]) / short, float(t.max_size) / long)  # the factor transform.resize uses
        return InputStage(original=self.image, network_input=_np(batch.tensors[0]), window_yxyx=(0, 0, h, w),
                          scale=scale, mean=mean, std=std)

    def _levels(self, maps: dict, prefix: str) -> list[FeatureLevel]:
        out = []
        for v in maps.values():
            stride = round(self.batch_hw[0] / v.shape[-2])
            out.append(FeatureLevel(name=f"{prefix}{int(math.log2(stride))}", stride=stride, features=_np(v[0])))
        return out

    def backbone(self) -> list[FeatureLevel]:
        return self._levels(self.tape.seen["body"], "C")

    def features(self) -> list[FeatureLevel]:
        return self._levels(self.tape.seen["fpn"], "P")

    def anchors(self) -> list[AnchorLevel]:
        gen = self.module.rpn.anchor_generator
        logits, _ = self.tape.seen["rpn_head"]
        out = []
        for cell, sizes, ratios, lg in zip(gen.cell_anchors, gen.sizes, gen.aspect_ratios, logits):
            h, w = int(lg.shape[-2]), int(lg.shape[-1])
            out.append(AnchorLevel(stride=round(self.batch_hw[0] / h), sizes=tuple(float(s) for s in sizes),
                                   aspect_ratios=tuple(float(r) for r in ratios), cell_anchors=_np(cell),
                                   grid_hw=(h, w), count=int(cell.shape[0]) * h * w))
        return out

    def rpn(self) -> RPNStage:
        rpn = self.module.rpn
        logits, _ = self.tape.seen["rpn_head"]
        (refined, objectness, _, per_level), (boxes, scores) = self.tape.seen["filter_proposals"]
        flat = objectness.detach().reshape(1, -1)
        pre = rpn._get_top_n_idx(flat, per_level)[0]  # the model's own per-level top-n
        return RPNStage(
            objectness=[_np(lg[0].sigmoid()) for lg in logits],
            anchors=_np(self.tape.seen["anchors"][0]), refined=_np(refined[0]),
            scores=_np(flat[0].sigmoid()), pre_nms_index=pre.cpu().numpy().astype(np.int64),
            proposals=_np(boxes[0]), proposal_scores=_np(scores[0]),
            post_nms_top_n=int(rpn.post_nms_top_n()), nms_thresh=float(rpn.nms_thresh),
        )  # fmt: skip

    def roi(self, features: list[FeatureLevel]) -> RoIStage:
        pool = self.module.roi_heads.box_roi_pool
        (_, proposals, _), pooled = self.tape.seen["box_roi_pool"]
        names = [n for n in self.tape.seen["fpn"] if n in pool.featmap_names]
        keys = list(self.tape.seen["fpn"])
        level_in_pool = pool.map_levels(proposals).cpu().numpy().astype(np.int64)
        levels = np.array([keys.index(names[i]) for i in level_in_pool], np.int64).reshape(-1)
        scales = tuple(1.0 / f.stride for f in features)
        return RoIStage(pooled=_np(pooled), levels=levels, spatial_scales=scales,
                        sampling_ratio=int(pool.sampling_ratio), aligned=False, output_size=int(pool.output_size[0]),
                        method="roi_align")

    def box_head(self) -> BoxHeadStage:
        import torch
        from torchvision.ops import boxes as box_ops

        roi = self.module.roi_heads
        class_logits, box_regression = self.tape.seen["box_predictor"]
        (_, proposals, _), _ = self.tape.seen["box_roi_pool"]
        probs = torch.softmax(class_logits, -1)
        refined = box_ops.clip_boxes_to_image(roi.box_coder.decode(box_regression, proposals), self.resized_hw)
        det = self.tape.seen["roi_heads"][0][0]
        fg, k = probs[:, 1:].reshape(-1), probs.shape[1]
        above = torch.where(fg > roi.score_thresh)[0]
        cand = refined[:, 1:].reshape(-1, 4)[above]
        labels = (above % (k - 1)) + 1
        keep = box_ops.remove_small_boxes(cand, min_size=1e-2)
        after_nms = box_ops.batched_nms(cand[keep], fg[above][keep], labels[keep], roi.nms_thresh)
        counts = {"candidates": int(fg.numel()), "above_threshold": int(above.numel()),
                  "after_nms": int(after_nms.numel()), "kept": int(det["boxes"].shape[0])}
        return BoxHeadStage(class_probs=_np(probs), refined=_np(refined), score_thresh=float(roi.score_thresh),
                            nms_thresh=float(roi.nms_thresh), max_detections=int(roi.detections_per_img),
                            counts=counts, boxes=_np(det["boxes"]), scores=_np(det["scores"]),
                            class_ids=det["labels"].cpu().numpy().astype(np.int64))

    def mask(self) -> MaskStage:
        det = self.tape.seen["roi_heads"][0][0]
        return MaskStage(probs=_np(det["masks"][:, 0]), pasted=self.detections.masks,
                         threshold=float(self.runtime.mask_threshold))


def record_torchvision(runtime: TorchRuntime, image: np.ndarray) -> TorchvisionStages:
    """Run ``runtime.predict([image])`` (RGB uint8 (H, W, 3)) with the hooks in place."""
    with _hooked(runtime.module, _Tape()) as tape:
        detections = runtime.predict([image])[0]
    return TorchvisionStages(runtime, image, tape, detections)
