"""The ``torchvision`` baseline: torchvision's Mask R-CNN called as its documentation shows.

A :class:`~masklab.runtime.Runtime` like masklab's own (``name``, ``precision``, ``predict(images) -> list[Detections]``), so the case runs
inside a Segmenter and its outputs go through the same conversion to Instances as every other case.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from masklab.runtime.torch import to_tensor_chw
from masklab.structures.detections import Detections

__all__ = ["TorchvisionRuntime"]


class TorchvisionRuntime:
    """``module([image, ...])`` on an eager fp32 torchvision ``MaskRCNN``, masks thresholded at 0.5.

    Unlike masklab's runtimes it keeps torchvision's full-resolution float masks and thresholds them
    afterwards: the cost a user of torchvision pays.
    """

    name = "torchvision"
    precision = "fp32"

    def __init__(self, module) -> None:
        self.module = module.eval()

    def predict(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """RGB uint8 (H, W, 3) arrays -> Detections in original-image pixels (boxes xyxy)."""
        import torch

        with torch.inference_mode():
            outs = self.module([to_tensor_chw(im) for im in images])
        return [
            Detections(
                boxes=o["boxes"].numpy(),
                scores=o["scores"].numpy(),
                class_ids=o["labels"].numpy().astype(np.int64),
                masks=(o["masks"][:, 0] > 0.5).numpy(),
            )
            for o in outs
        ]
