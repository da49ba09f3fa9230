"""`Detections`: what a runtime returns for one image, before class names and filtering.

The one shape every runtime (eager torch, torch-fast, OpenVINO, ONNX Runtime, TorchScript, the matterport
port) produces; :class:`~masklab.inference.segmenter.Segmenter` turns it into
:class:`~masklab.structures.instances.Instances`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Detections"]


@dataclass(frozen=True)
class Detections:
    """Raw model output for one image, in original-image pixels.

    ``boxes`` float32 (N, 4) xyxy; ``scores`` float32 (N,) in [0, 1]; ``class_ids`` int64 (N,) the model's
    ids (index into the model card's categories); ``masks`` bool (N, H, W): a dense array, or (tiled
    inference) a :class:`~masklab.structures.cropped.CroppedMasks` of that shape.

    Optional: ``mask_probs`` float32 (N, M, M), the mask head's probabilities in [0, 1] inside each box
    before pasting (M = 28; the runtimes that paste set it), from which the per-instance mask quality and
    ``refine`` work; ``quality`` float32 (N,) in [0, 1] where the model predicts it itself (a MaskIoU head)
    or tiling merged it.
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    masks: np.ndarray
    mask_probs: np.ndarray | None = None
    quality: np.ndarray | None = None
