"""The eager torch runtime: torchvision's module as it is (the fp32 reference every other runtime is
compared with)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from masklab.structures.detections import Detections
from masklab.structures.masks import paste_masks

__all__ = ["TorchRuntime", "to_tensor_chw"]


def to_tensor_chw(image: np.ndarray):
    """RGB uint8 (H, W, 3) -> float32 tensor (3, H, W) in [0, 1], exactly as torchvision's ``to_tensor``."""
    import torch

    arr = np.ascontiguousarray(image)
    with warnings.catch_warnings():
        # Loaded images are read-only arrays; the uint8 view is only read (.to() makes a new tensor).
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        t = torch.from_numpy(arr).permute(2, 0, 1)
    return t.to(torch.float32).div_(255)


class TorchRuntime:
    """Runs a torchvision-style ``MaskRCNN`` module eagerly (the fp32 reference).

    The module's own ``transform`` (normalise + resize), ``backbone``, ``rpn`` and ``roi_heads`` run as in
    ``GeneralizedRCNN.forward``; post-processing scales boxes back and pastes masks straight into bool
    arrays (no full-resolution float masks).
    """

    name = "torch"
    precision = "fp32"

    def __init__(self, module, *, device: str = "cpu", mask_threshold: float = 0.5) -> None:
        import torch

        self.device = torch.device(device)
        self.module = module.eval().to(self.device)
        self.mask_threshold = mask_threshold

    def forward_core(self, images: Sequence[np.ndarray]):
        """The tensor part: returns torchvision's per-image detection dicts (boxes in *resized* pixels)
        and the resized and original sizes. Exporters trace this part; pasting stays outside."""
        import torch

        m = self.module
        tensors = [to_tensor_chw(im).to(self.device, non_blocking=True) for im in images]
        original_sizes = [tuple(t.shape[-2:]) for t in tensors]
        with torch.inference_mode():
            batch, _ = m.transform(tensors)
            features = m.backbone(batch.tensors)
            proposals, _ = m.rpn(batch, features)
            detections, _ = m.roi_heads(features, proposals, batch.image_sizes)
        return detections, batch.image_sizes, original_sizes

    def predict(self, images: Sequence[np.ndarray]) -> list[Detections]:
        from torchvision.models.detection.transform import resize_boxes

        detections, resized, original = self.forward_core(images)
        out = []
        for det, rs, os_ in zip(detections, resized, original):
            boxes = resize_boxes(det["boxes"], rs, os_)
            masks = paste_masks(det["masks"].float().cpu(), boxes.float().cpu(), os_, threshold=self.mask_threshold)
            out.append(
                Detections(
                    boxes=boxes.float().cpu().numpy(),
                    scores=det["scores"].float().cpu().numpy(),
                    class_ids=det["labels"].cpu().numpy().astype(np.int64),
                    masks=masks,
                    mask_probs=det["masks"][:, 0].float().cpu().numpy(),  # (N, 28, 28): quality, refine
                )
            )
        return out
