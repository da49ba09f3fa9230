"""The trace of one image through Mask R-CNN: one plain dataclass per stage of the tutorial's diagram.

Every array is numpy on the CPU, copied from the tensors the real forward pass produced (forward hooks
on the network's own modules, see :mod:`masklab.inference.explain.torchvision` and
:mod:`masklab.inference.explain.matterport`). Boxes inside the network are float32 ``x1, y1, x2, y2``
in pixels of the **network input** (the resized and padded tensor, :attr:`InputStage.network_input`);
the final :class:`~masklab.structures.instances.Instances` are in pixels of the original image. ``R``
is the number of proposals, ``K`` the number of classes (background included), ``D`` the detections.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from masklab.structures.instances import Instances

__all__ = [
    "to_numpy",
    "InputStage",
    "FeatureLevel",
    "AnchorLevel",
    "RPNStage",
    "RoIStage",
    "BoxHeadStage",
    "MaskStage",
    "Trace",
]


def to_numpy(t) -> np.ndarray:
    """A recorded tensor as a float32 numpy array (detached, on the CPU)."""
    return t.detach().float().cpu().numpy()


@dataclass(frozen=True)
class InputStage:
    """Stage 1, the image as the network receives it.

    ``original``: uint8 (H, W, 3) RGB; ``network_input``: float32 (3, Hp, Wp), normalised (torchvision:
    ``(x/255 - mean) / std``; matterport: ``x - MEAN_PIXEL``), resized and zero-padded to the size the
    backbone needs; ``window_yxyx``: int ``(y1, x1, y2, x2)`` of the resized image inside it (exclusive
    ends; the rest is padding); ``scale``: resized / original size (float, same for both axes up to
    rounding); ``mean`` / ``std``: per-channel RGB values that undo the normalisation
    (``x * std + mean``, in uint8 units).
    """

    original: np.ndarray
    network_input: np.ndarray
    window_yxyx: tuple[int, int, int, int]
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def padded_hw(self) -> tuple[int, int]:
        return int(self.network_input.shape[1]), int(self.network_input.shape[2])

    def network_image(self) -> np.ndarray:
        """The network input turned back into uint8 (Hp, Wp, 3) RGB (padding shows as the mean colour
        for torchvision, which pads after normalising, and as black for matterport)."""
        x = np.transpose(self.network_input, (1, 2, 0)).astype(np.float64)
        x = x * np.asarray(self.std) + np.asarray(self.mean)
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class FeatureLevel:
    """One feature map: ``name`` (``"C3"``, ``"P2"``...), ``stride`` in network-input pixels per cell
    (int), ``features`` float32 (C, h, w)."""

    name: str
    stride: int
    features: np.ndarray


@dataclass(frozen=True)
class AnchorLevel:
    """Stage 3, the anchors of one pyramid level.

    ``stride`` (int, network-input px between anchor centres); ``sizes``: anchor side lengths in px
    (sqrt of the area); ``aspect_ratios``: height / width; ``cell_anchors``: float32 (A, 4) xyxy of the
    A anchors at one location, centred on (0, 0); ``grid_hw``: (h, w) locations; ``count``: anchors on
    this level (``A * h * w``).
    """

    stride: int
    sizes: tuple[float, ...]
    aspect_ratios: tuple[float, ...]
    cell_anchors: np.ndarray
    grid_hw: tuple[int, int]
    count: int


@dataclass(frozen=True)
class RPNStage:
    """Stage 4, the Region Proposal Network.

    ``objectness``: per level, float32 (A, h, w) probability in [0, 1] that the anchor holds an object;
    ``anchors``: float32 (N, 4) every anchor, xyxy network-input px, levels concatenated; ``refined``:
    float32 (N, 4) the same anchors moved by the RPN's box deltas (not yet clipped); ``scores``:
    float32 (N,) objectness probability per anchor, same order; ``pre_nms_index``: int64 (M,) the
    anchors taken to NMS (torchvision: the top ``pre_nms_top_n`` per level; matterport: top 6000 over
    all levels); ``proposals``: float32 (R, 4) what NMS kept, clipped, best first; ``proposal_scores``
    float32 (R,); ``post_nms_top_n``: the most proposals the model keeps; ``nms_thresh``: the RPN's IoU.
    """

    objectness: list[np.ndarray]
    anchors: np.ndarray
    refined: np.ndarray
    scores: np.ndarray
    pre_nms_index: np.ndarray
    proposals: np.ndarray
    proposal_scores: np.ndarray
    post_nms_top_n: int
    nms_thresh: float

    def counts(self) -> dict[str, int]:
        """Anchors, anchors sent to NMS and proposals kept."""
        return {"anchors": int(len(self.anchors)), "before_nms": int(len(self.pre_nms_index)),
                "after_nms": int(len(self.proposals))}


@dataclass(frozen=True)
class RoIStage:
    """Stage 5, RoIAlign: the box head's fixed-size crop of each proposal.

    ``pooled``: float32 (R, C, P, P) what the model's RoIAlign returned (P = 7); ``levels``: int64
    (R,) index into :attr:`Trace.features` of the map each proposal was sampled from; ``spatial_scales``
    float per level (1 / stride); ``sampling_ratio``: samples per bin side (torchvision: 2; matterport:
    -1: TensorFlow's ``crop_and_resize``, one bilinear sample per bin); ``aligned``: half-pixel offset
    used; ``method``: ``"roi_align"`` (torchvision.ops.roi_align) or ``"crop_and_resize"`` (matterport).
    """

    pooled: np.ndarray
    levels: np.ndarray
    spatial_scales: tuple[float, ...]
    sampling_ratio: int
    aligned: bool
    output_size: int
    method: str = "roi_align"


@dataclass(frozen=True)
class BoxHeadStage:
    """Stage 6, the box head (classifier + box refinement) and its post-processing.

    ``class_probs``: float32 (R, K) softmax per proposal (column 0 = background); ``refined``: float32
    (R, K, 4) each proposal's box refined for every class, clipped, xyxy network-input px;
    ``score_thresh`` / ``nms_thresh`` / ``max_detections``: the settings in force; ``counts``: how many
    (proposal, class) candidates remain after each step (``candidates``: every non-background pair;
    ``above_threshold``; ``after_nms``; ``kept``: the detections); ``boxes`` float32 (D, 4), ``scores``
    float32 (D,), ``class_ids`` int64 (D,): the detections, in network-input px, best first.
    """

    class_probs: np.ndarray
    refined: np.ndarray
    score_thresh: float
    nms_thresh: float
    max_detections: int
    counts: dict[str, int]
    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray


@dataclass(frozen=True)
class MaskStage:
    """Stage 7, the mask head: ``probs``: float32 (D, 28, 28) sigmoid mask probability of each detection's
    class, in [0, 1]; ``pasted``: bool (D, H, W) those masks resized into their boxes on the original
    image and thresholded at ``threshold`` (the runtime's output, before class filtering)."""

    probs: np.ndarray
    pasted: np.ndarray
    threshold: float


@dataclass(frozen=True)
class Trace:
    """One image through the model, stage by stage; :attr:`instances` equals ``seg(image)`` exactly.

    ``model``: the model's name; ``categories``: class names by id (background first); ``note``: how the
    trace was recorded (e.g. the eager torch module standing in for an OpenVINO runtime); ``backbone``:
    the backbone's own outputs (C levels; empty where the model does not expose them); ``features``: the
    maps the heads read (FPN levels P2..), finest first.
    """

    model: str
    categories: tuple[str, ...]
    note: str
    input: InputStage
    backbone: list[FeatureLevel]
    features: list[FeatureLevel]
    anchors: list[AnchorLevel]
    rpn: RPNStage
    roi: RoIStage
    box_head: BoxHeadStage
    mask: MaskStage
    instances: Instances
    extra: dict[str, object] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """Every count along the way, in order (anchors to final instances)."""
        return {**self.rpn.counts(), **{f"box_{k}": v for k, v in self.box_head.counts.items()},
                "instances": len(self.instances)}
