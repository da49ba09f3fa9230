"""The exportable *tensor core* of a torchvision Mask R-CNN: everything but mask pasting.

torchvision's own ``paste_masks_in_image`` loops over detections; exported, that loop becomes an ONNX
``Loop`` that OpenVINO cannot convert and that ONNX Runtime runs slowly. So the core stops at the 28x28
mask probabilities, and :func:`masklab.structures.masks.paste_masks` pastes them outside, in the same way
for every backend. Export code lives here, never in the model code.

Core contract (one image per call; any H, W; N may be 0):

- input ``image``: float32 (3, H, W), RGB in [0, 1] (uint8 / 255);
- ``boxes``: float32 (N, 4) xyxy in pixels of the *input* image;
- ``scores``: float32 (N,) in [0, 1], descending;
- ``labels``: int64 (N,), the model's class ids;
- ``mask_probs``: float32 (N, 1, 28, 28), probabilities in [0, 1] inside each box;
- ``mask_iou`` (only for a model with a MaskIoU head, :mod:`masklab.models.mask_iou`): float32 (N,) in
  [0, 1], the predicted IoU of each mask, which becomes the detection's ``quality``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["CoreOutputs", "TensorCore", "core_to_detections", "CORE_OUTPUT_NAMES", "MASK_IOU_OUTPUT", "output_names"]

CORE_OUTPUT_NAMES = ("boxes", "scores", "labels", "mask_probs")
#: the fifth output of a model with a MaskIoU head
MASK_IOU_OUTPUT = "mask_iou"


@dataclass(frozen=True)
class CoreOutputs:
    """The core's outputs for one image, as numpy (see the module docstring for shapes); ``mask_iou``
    None for a model without a MaskIoU head."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    mask_probs: np.ndarray
    mask_iou: np.ndarray | None = None

    def select(self, keep: np.ndarray) -> CoreOutputs:
        """The detections where bool (N,) ``keep`` is True."""
        return CoreOutputs(self.boxes[keep], self.scores[keep], self.labels[keep], self.mask_probs[keep],
                           None if self.mask_iou is None else self.mask_iou[keep])

    @classmethod
    def from_outputs(cls, outputs) -> CoreOutputs:
        """From the core's outputs in order (four, or five with ``mask_iou``)."""
        return cls(*outputs[:4], mask_iou=outputs[4] if len(outputs) > 4 else None)


def output_names(model) -> tuple[str, ...]:
    """The core's output names for a torchvision ``MaskRCNN`` ``model`` (``mask_iou`` with a MaskIoU head)."""
    from masklab.models.mask_iou import has_mask_iou_head

    return CORE_OUTPUT_NAMES + ((MASK_IOU_OUTPUT,) if has_mask_iou_head(model) else ())


def _tensor_core_class():
    import torch
    from torchvision.models.detection.transform import resize_boxes

    class _TensorCore(torch.nn.Module):
        """``image (3, H, W)`` -> ``(boxes, scores, labels, mask_probs[, mask_iou])``; wraps a torchvision MaskRCNN."""

        def __init__(self, model) -> None:
            super().__init__()
            self.transform = model.transform
            self.backbone = model.backbone
            self.rpn = model.rpn
            self.roi_heads = model.roi_heads

        def forward(self, image):
            original_size = (image.shape[-2], image.shape[-1])
            batch, _ = self.transform([image])
            features = self.backbone(batch.tensors)
            proposals, _ = self.rpn(batch, features)
            detections, _ = self.roi_heads(features, proposals, batch.image_sizes)
            det = detections[0]
            boxes = resize_boxes(det["boxes"], batch.image_sizes[0], original_size)
            if "mask_iou" in det:  # a MaskIoU head (its hook on roi_heads added it)
                return boxes, det["scores"], det["labels"], det["masks"], det["mask_iou"]
            return boxes, det["scores"], det["labels"], det["masks"]

    return _TensorCore


def TensorCore(model):  # noqa: N802 - a factory that reads like the class it builds (torch imported lazily)
    """Wrap a torchvision ``MaskRCNN`` (eval mode) as the exportable core (see the module docstring)."""
    return _tensor_core_class()(model.eval())


def core_to_detections(out: CoreOutputs, size_hw: tuple[int, int], *, mask_threshold: float = 0.5):
    """Paste the core's 28x28 masks into the image (numpy: no torch) and return
    :class:`~masklab.structures.detections.Detections`."""
    from masklab.structures.detections import Detections
    from masklab.structures.masks import paste_masks

    boxes = np.asarray(out.boxes, np.float32).reshape(-1, 4)
    probs = np.asarray(out.mask_probs, np.float32)
    probs = probs.reshape(len(boxes), 1, *probs.shape[-2:])  # (N, 1, M, M) even when N == 0
    masks = paste_masks(probs, boxes, size_hw, threshold=mask_threshold)
    return Detections(
        boxes=boxes,
        scores=np.asarray(out.scores, np.float32).reshape(-1),
        class_ids=np.asarray(out.labels).astype(np.int64).reshape(-1),
        masks=masks,
        mask_probs=probs[:, 0],  # (N, M, M): the per-instance quality and refine read them
        quality=None if out.mask_iou is None else np.asarray(out.mask_iou, np.float32).reshape(-1),
    )
