"""The :class:`~masklab.runtime.torch.Backend` that runs matterport's graph: mold -> network -> unmold."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from masklab.errors import UsageError
from masklab.models.matterport.config import MatterportConfig
from masklab.models.matterport.h5 import load_h5_weights
from masklab.models.matterport.network import HeadOutputs, MatterportMaskRCNN
from masklab.models.matterport.preprocess import MoldedImage, UnmoldedDetections, mold_image, unmold_detections
from masklab.structures.detections import Detections

__all__ = ["MatterportRuntime", "MatterportRun", "build_matterport"]


def build_matterport(
    weights: str | os.PathLike | None, *, min_confidence: float | None = None, seed: int = 0
) -> MatterportMaskRCNN:
    """The network with ``weights`` (a matterport ``.h5``) loaded, or seeded random weights if None.

    ``min_confidence`` sets ``DETECTION_MIN_CONFIDENCE`` (None: matterport's 0.7).
    """
    cfg = MatterportConfig()
    if min_confidence is not None:
        cfg = dataclasses.replace(cfg, DETECTION_MIN_CONFIDENCE=float(min_confidence))
    if weights is None:
        torch.manual_seed(seed)
    model = MatterportMaskRCNN(cfg)
    if weights is not None:
        load_h5_weights(model, weights)
    return model.eval()


@dataclass
class MatterportRun:
    """One image through the graph, every stage kept (for debugging and the reference tests).

    ``detections`` float32 (D, 6) normalized, zero-padded; ``masks28`` float32 (n, 28, 28) the sigmoid
    mask of each detection's class; ``result`` the unmolded results in original pixels.
    """

    molded: MoldedImage
    heads: HeadOutputs
    detections: np.ndarray | None
    masks28: np.ndarray | None
    result: UnmoldedDetections | None


class MatterportRuntime:
    """Runs :class:`MatterportMaskRCNN` one image at a time (matterport's ``BATCH_SIZE`` is 1).

    Results are matterport's ``detect()`` results: integer boxes (``y2``/``x2`` exclusive, returned here
    as xyxy float32), class ids indexing the tutorial's 81 names, masks thresholded at 0.5.
    """

    name = "torch"
    precision = "fp32"

    def __init__(self, module: MatterportMaskRCNN, *, device: str = "cpu") -> None:
        if not isinstance(module, MatterportMaskRCNN):
            raise UsageError(f"MatterportRuntime runs a MatterportMaskRCNN, found {type(module).__name__}")
        self.device = torch.device(device)
        self.module = module.eval().to(self.device)
        self.config = self.module.config

    # The two steps another runtime replaces (an exported network runs them; the glue stays the same).
    def forward_heads(self, x: torch.Tensor) -> HeadOutputs:
        """Molded float32 (1, 3, S, S) -> :class:`HeadOutputs`."""
        return self.module.forward_heads(x)

    def detect_and_mask(self, heads: HeadOutputs, window, cfg: MatterportConfig):
        """Detections (D, 6) and the (n, 28, 28) masks of their classes."""
        return self.module.detect_and_mask(heads, window, cfg)

    def run(self, image: np.ndarray, *, config: MatterportConfig | None = None) -> MatterportRun:
        """All stages for one RGB uint8 (H, W, 3) image; ``config`` overrides the detection settings
        (``DETECTION_*``; the resize settings must be the module's)."""
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            found = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise UsageError(f"expected an RGB uint8 (H, W, 3) image, found {found}")
        molded = mold_image(image, self.config)
        x = torch.from_numpy(molded.network_input(self.config)).permute(2, 0, 1)[None].to(self.device)
        with torch.inference_mode():
            heads = self.forward_heads(x)
        return self.redetect(MatterportRun(molded, heads, None, None, None), config=config)

    def redetect(self, run: MatterportRun, *, config: MatterportConfig | None = None) -> MatterportRun:
        """Re-run only the detection layer, mask head and unmolding of ``run`` (e.g. at another
        ``DETECTION_MIN_CONFIDENCE``); the backbone, RPN and classifier outputs are reused."""
        cfg = config or self.config
        if cfg.image_shape != self.config.image_shape:
            raise UsageError(f"config's IMAGE_MAX_DIM {cfg.IMAGE_MAX_DIM} differs from the network's input size")
        with torch.inference_mode():
            det, masks = self.detect_and_mask(run.heads, run.molded.window, cfg)
        det_np, masks_np = det.float().cpu().numpy(), masks.float().cpu().numpy()
        result = unmold_detections(det_np, masks_np, run.molded, molded_hw=cfg.image_shape)
        return MatterportRun(run.molded, run.heads, det_np, masks_np, result)

    @staticmethod
    def to_detections(result: UnmoldedDetections) -> Detections:
        """matterport's results as :class:`Detections` (xyxy float32 from the integer ``rois``)."""
        return Detections(
            boxes=result.rois[:, [1, 0, 3, 2]].astype(np.float32).reshape(-1, 4),
            scores=result.scores.astype(np.float32),
            class_ids=result.class_ids.astype(np.int64),
            masks=result.masks,
            mask_probs=result.mask_probs,
        )

    def predict(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """RGB uint8 (H, W, 3) images -> one :class:`Detections` each, in original-image pixels."""
        return [self.to_detections(self.run(image).result) for image in images]
