"""The eager torch runtime: torchvision's module as it is (the fp32 reference every other runtime is
compared with)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from masklab.structures.detections import Detections

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
            masks = paste_masks_torch(det["masks"].float().cpu(), boxes.float().cpu(), os_, threshold=self.mask_threshold)
            out.append(
                Detections(
                    boxes=boxes.float().cpu().numpy(),
                    scores=det["scores"].float().cpu().numpy(),
                    class_ids=det["labels"].cpu().numpy().astype(np.int64),
                    masks=masks,
                    mask_probs=det["masks"][:, 0].float().cpu().numpy(),  # (N, 28, 28): quality, refine
                    quality=det["mask_iou"].float().cpu().numpy() if "mask_iou" in det else None,  # a MaskIoU head's
                )
            )
        return out


def paste_masks_torch(mask_probs, boxes, image_size: tuple[int, int], *, threshold: float = 0.5, padding: int = 1) -> np.ndarray:
    """torchvision's own mask pasting (``expand_masks``, ``expand_boxes``, ``F.interpolate``), thresholded
    into bool (N, H, W) without building the (N, H, W) float tensor: the eager runtimes stay bit-for-bit
    torchvision. ``mask_probs`` float tensor (N, 1, M, M); ``boxes`` float tensor (N, 4) xyxy in pixels
    of the output image. The torch-free runtimes use :func:`masklab.structures.masks.paste_masks`, which
    equals it except where an interpolated probability lies within ~1e-6 of ``threshold``."""
    import torch
    import torch.nn.functional as F
    from torchvision.models.detection.roi_heads import expand_boxes, expand_masks

    h, w = image_size
    n = int(mask_probs.shape[0])
    out = np.zeros((n, h, w), dtype=bool)
    if n == 0:
        return out
    masks, scale = expand_masks(mask_probs, padding=padding)
    boxes_l = expand_boxes(boxes, scale).to(dtype=torch.int64).tolist()
    for i in range(n):
        x0, y0, x1, y1 = boxes_l[i]
        bw, bh = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
        xa, xb = max(x0, 0), min(x1 + 1, w)
        ya, yb = max(y0, 0), min(y1 + 1, h)
        if xa >= xb or ya >= yb:
            continue
        m = F.interpolate(masks[i][None], size=(bh, bw), mode="bilinear", align_corners=False)[0, 0]
        out[i, ya:yb, xa:xb] = (m[(ya - y0) : (yb - y0), (xa - x0) : (xb - x0)] > threshold).numpy()
    return out
