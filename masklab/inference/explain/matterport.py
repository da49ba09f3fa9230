"""Map the matterport port's stages onto the trace: :meth:`MatterportRuntime.run` keeps every stage.

The run is the runtime's own (``run(image)``, what its ``predict`` calls); two forward hooks add what
``HeadOutputs`` does not keep: the classifier's input (the 7x7 crops of the proposals) and the mask
head's input. matterport's boxes are normalised ``(y1, x1, y2, x2)``; the trace converts them to xyxy
network-input pixels (``y * (S - 1)`` for starts, ``y * (S - 1) + 1`` for ends, as ``denorm_boxes``).
Zero padding rows (matterport pads proposals to ``POST_NMS_ROIS_INFERENCE``) are dropped.
"""

from __future__ import annotations

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
from masklab.models.matterport import ops
from masklab.models.matterport.runtime import MatterportRun, MatterportRuntime
from masklab.structures.detections import Detections

__all__ = ["MatterportStages", "record_matterport"]


class MatterportStages:
    """The stages of one image through :class:`MatterportRuntime` (same methods as the torchvision one)."""

    def __init__(self, runtime: MatterportRuntime, image: np.ndarray, run: MatterportRun, pooled,
                 detections: Detections) -> None:
        self.runtime, self.image, self.run, self.pooled, self.detections = runtime, image, run, pooled, detections
        self.cfg = runtime.module.config
        self.size = self.cfg.IMAGE_MAX_DIM
        self.n_proposals = int((run.heads.proposals.abs().sum(1) > 0).sum())

    def _px(self, yxyx: np.ndarray) -> np.ndarray:
        """Normalised (..., 4) y1x1y2x2 -> float32 xyxy network-input pixels."""
        s = self.size - 1
        y1, x1, y2, x2 = (yxyx[..., i] * s for i in range(4))
        return np.stack([x1, y1, x2 + 1, y2 + 1], -1).astype(np.float32)

    def input(self) -> InputStage:
        m = self.run.molded
        net = np.transpose(m.network_input(self.cfg), (2, 0, 1))
        return InputStage(original=self.image, network_input=net, window_yxyx=tuple(int(v) for v in m.window),
                          scale=float(m.scale), mean=tuple(float(v) for v in self.cfg.MEAN_PIXEL), std=(1.0, 1.0, 1.0))

    def backbone(self) -> list[FeatureLevel]:
        return [FeatureLevel(f"C{i + 2}", 2 ** (i + 2), _np(c[0])) for i, c in enumerate(self.run.heads.backbone)]

    def features(self) -> list[FeatureLevel]:
        return [FeatureLevel(f"P{i + 2}", s, _np(p[0])) for i, (p, s) in
                enumerate(zip(self.run.heads.features, self.cfg.BACKBONE_STRIDES))]

    def _level_sizes(self) -> list[int]:
        return [int(np.ceil(self.size / s)) for s in self.cfg.BACKBONE_STRIDES]

    def anchors(self) -> list[AnchorLevel]:
        a = self._px(_np(self.runtime.module.anchors(self.runtime.device)))
        n_ratio, out, start = len(self.cfg.RPN_ANCHOR_RATIOS), [], 0
        for g, stride, scale in zip(self._level_sizes(), self.cfg.BACKBONE_STRIDES, self.cfg.RPN_ANCHOR_SCALES):
            cell = a[start : start + n_ratio]  # location (0, 0): matterport centres anchors on the grid points
            out.append(AnchorLevel(stride=stride, sizes=(float(scale),), aspect_ratios=tuple(self.cfg.RPN_ANCHOR_RATIOS),
                                   cell_anchors=cell, grid_hw=(g, g), count=g * g * n_ratio))
            start += g * g * n_ratio
        return out

    def rpn(self) -> RPNStage:
        import torch

        h, cfg = self.run.heads, self.cfg
        anchors_n = self.runtime.module.anchors(self.runtime.device)
        std = torch.tensor(cfg.RPN_BBOX_STD_DEV, dtype=torch.float32, device=anchors_n.device)
        refined = ops.apply_box_deltas(anchors_n, h.rpn_deltas * std)  # the port's own op, every anchor
        probs = _np(h.rpn_probs)
        k = min(cfg.PRE_NMS_LIMIT, probs.shape[0])
        pre = torch.sort(h.rpn_probs, descending=True, stable=True).indices[:k]  # as its proposal layer
        objectness, start, n_ratio = [], 0, len(cfg.RPN_ANCHOR_RATIOS)
        for g in self._level_sizes():
            objectness.append(probs[start : start + g * g * n_ratio].reshape(g, g, n_ratio).transpose(2, 0, 1))
            start += g * g * n_ratio
        n = self.n_proposals
        return RPNStage(objectness=objectness, anchors=self._px(_np(anchors_n)), refined=self._px(_np(refined)),
                        scores=probs, pre_nms_index=pre.cpu().numpy().astype(np.int64),
                        proposals=self._px(_np(h.proposals[:n])), proposal_scores=_np(h.proposal_scores[:n]),
                        post_nms_top_n=int(cfg.POST_NMS_ROIS_INFERENCE), nms_thresh=float(cfg.RPN_NMS_THRESHOLD))

    def roi(self, features: list[FeatureLevel]) -> RoIStage:
        n = self.n_proposals
        levels = ops.roi_levels(self.run.heads.proposals[:n], self.cfg.image_shape).cpu().numpy() - 2
        return RoIStage(pooled=_np(self.pooled[:n]), levels=levels.astype(np.int64),
                        spatial_scales=tuple(1.0 / f.stride for f in features), sampling_ratio=-1, aligned=False,
                        output_size=int(self.cfg.POOL_SIZE), method="crop_and_resize")

    def box_head(self) -> BoxHeadStage:
        import torch

        h, cfg, n = self.run.heads, self.cfg, self.n_proposals
        probs, deltas, rois = h.class_probs[:n], h.box_deltas[:n], h.proposals[:n]
        std = torch.tensor(cfg.BBOX_STD_DEV, dtype=torch.float32, device=rois.device)
        window = self.runtime.module.normalized_window(self.run.molded.window)
        k = probs.shape[1]
        refined = torch.stack([ops.clip_boxes(ops.apply_box_deltas(rois, deltas[:, c] * std), window)
                               for c in range(k)], 1)
        cls = probs.argmax(1)
        best = probs[torch.arange(n, device=probs.device), cls]
        thr = float(cfg.DETECTION_MIN_CONFIDENCE)
        above = int(((cls > 0) & ((best >= thr) if thr else True)).sum())
        det = self.run.detections
        d = int((det[:, 4] != 0).astype(np.int64).cumprod().sum())
        counts = {"candidates": n, "above_threshold": above, "after_nms": d, "kept": d}
        return BoxHeadStage(class_probs=_np(probs), refined=self._px(_np(refined)), score_thresh=thr,
                            nms_thresh=float(cfg.DETECTION_NMS_THRESHOLD), max_detections=int(cfg.DETECTION_MAX_INSTANCES),
                            counts=counts, boxes=self._px(det[:d, :4]), scores=det[:d, 5].astype(np.float32),
                            class_ids=det[:d, 4].astype(np.int64))

    def mask(self) -> MaskStage:
        probs = self.run.masks28 if self.run.masks28 is not None else np.zeros((0, 28, 28), np.float32)
        return MaskStage(probs=probs.astype(np.float32), pasted=self.detections.masks, threshold=0.5)


def record_matterport(runtime: MatterportRuntime, image: np.ndarray) -> MatterportStages:
    """``runtime.run(image)`` (RGB uint8 (H, W, 3)) with a hook on the classifier for its 7x7 crops."""
    seen = {}

    def keep_input(module, args, output) -> None:  # returns None: the output passes on unchanged
        seen.setdefault("pooled", args[0])

    handle = runtime.module.classifier.register_forward_hook(keep_input)
    try:
        run = runtime.run(image)
    finally:
        handle.remove()
    return MatterportStages(runtime, image, run, seen["pooled"], runtime.to_detections(run.result))
