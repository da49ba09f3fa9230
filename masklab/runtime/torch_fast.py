"""Faster torch paths behind the :class:`~masklab.runtime.torch.Backend` seam.

:class:`TorchFastRuntime` runs the same torchvision module as the eager reference, with:

- **channels-last** memory format on the CPU (exact: fp32 arithmetic, only the memory layout changes;
  ~1.15x on the ResNet-50 models here);
- **autocast** to bf16 (CPU with AVX-512 bf16, or CUDA) or fp16 (CUDA) when ``precision`` asks for it
  (reduced precision: outputs differ from fp32; judge them on a trained model's val AP);
- on **CUDA**: all images of a call in one batch, uint8 pixels pinned and copied with
  ``non_blocking=True``, normalisation on the GPU, and one device->host copy per batch (no host sync
  inside the loop).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np

from masklab.errors import UsageError
from masklab.runtime.torch import paste_masks_torch
from masklab.structures.detections import Detections

__all__ = ["TorchFastRuntime", "AUTOCAST_DTYPES"]

AUTOCAST_DTYPES = {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}


class TorchFastRuntime:
    """torch module with channels-last and optional autocast; see the module docstring.

    Args:
        module: a torchvision ``MaskRCNN``.
        device: ``"cpu"`` or ``"cuda[:N]"``.
        precision: ``"fp32"`` (exact), ``"bf16"`` or ``"fp16"`` (fp16: CUDA only).
        channels_last: default True (measured 1.15-1.24x on the ResNet-50 models on this CPU; the
            usual layout for tensor cores on CUDA).
        mask_threshold: mask probability above which a pixel is inside, in [0, 1].
    """

    def __init__(
        self,
        module,
        *,
        device: str = "cpu",
        precision: str = "fp32",
        channels_last: bool | None = None,
        mask_threshold: float = 0.5,
    ) -> None:
        import torch

        if precision not in AUTOCAST_DTYPES:
            raise UsageError(f"torch backend precision must be one of {list(AUTOCAST_DTYPES)}, found {precision!r}")
        self.device = torch.device(device)
        if precision == "fp16" and self.device.type != "cuda":
            raise UsageError("precision 'fp16' with the torch backend needs a CUDA GPU; on the CPU use 'bf16'")
        if precision == "bf16" and self.device.type == "cpu" and not _cpu_has_bf16():
            raise UsageError("precision 'bf16' needs a CPU with native bf16 (AVX-512 BF16 or AMX); this CPU has none")
        self.precision = precision
        self.autocast_dtype = None if AUTOCAST_DTYPES[precision] is None else getattr(torch, AUTOCAST_DTYPES[precision])
        if channels_last is None:
            channels_last = True
        self.channels_last = channels_last
        self.mask_threshold = mask_threshold
        if channels_last:
            # A copy: converting in place would silently change the module other backends share.
            module = copy.deepcopy(module).to(memory_format=torch.channels_last)
        self.module = module.eval().to(self.device)
        self.name = "torch-fast"  # the backend the user chose; precision and layout are attributes

    def _to_device(self, images: Sequence[np.ndarray]):
        import torch

        out = []
        for im in images:
            t = torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1)  # uint8 (3, H, W), a view
            if self.device.type == "cuda":
                # uint8 crosses the bus (4x fewer bytes than float32), from pinned memory, asynchronously.
                t = t.contiguous().pin_memory().to(self.device, non_blocking=True)
            out.append(t.to(torch.float32).div_(255))
        return out

    def forward_core(self, images: Sequence[np.ndarray]):
        """torchvision's per-image detection dicts (boxes in *resized* pixels), resized and original sizes."""
        import torch

        m = self.module
        tensors = self._to_device(images)
        original_sizes = [tuple(t.shape[-2:]) for t in tensors]
        with torch.inference_mode(), torch.autocast(
            self.device.type, dtype=self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None
        ):
            batch, _ = m.transform(tensors)
            x = batch.tensors
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            features = m.backbone(x)
            proposals, _ = m.rpn(batch, features)
            detections, _ = m.roi_heads(features, proposals, batch.image_sizes)
        return detections, batch.image_sizes, original_sizes

    def predict(self, images: Sequence[np.ndarray]) -> list[Detections]:
        import torch
        from torchvision.models.detection.transform import resize_boxes

        if not images:
            return []
        detections, resized, original = self.forward_core(images)
        # Rescale on the device, then one copy of everything to the host per batch.
        per_image = []
        for det, rs, os_ in zip(detections, resized, original):
            boxes = resize_boxes(det["boxes"].float(), rs, os_)
            iou = det["mask_iou"].float() if "mask_iou" in det else None  # a MaskIoU head's prediction
            per_image.append((boxes, det["scores"].float(), det["labels"], det["masks"].float(), iou))
        if self.device.type == "cuda":
            per_image = [tuple(None if t is None else t.to("cpu", non_blocking=True) for t in row) for row in per_image]
            torch.cuda.current_stream(self.device).synchronize()
        out = []
        for (boxes, scores, labels, probs, iou), os_ in zip(per_image, original):
            out.append(
                Detections(
                    boxes=boxes.numpy(),
                    scores=scores.numpy(),
                    class_ids=labels.numpy().astype(np.int64),
                    masks=paste_masks_torch(probs, boxes, os_, threshold=self.mask_threshold),
                    mask_probs=probs[:, 0].numpy(),  # (N, 28, 28): quality, refine
                    quality=None if iou is None else iou.numpy(),
                )
            )
        return out


def _cpu_has_bf16() -> bool:
    """True when the CPU runs bf16 natively (oneDNN reports it); emulated bf16 would be slower than fp32."""
    import torch

    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
