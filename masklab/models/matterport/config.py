"""The matterport inference settings the port uses (matterport's defaults + the COCO ``InferenceConfig``).

Values are those of ``mrcnn/config.py`` at matterport commit 3deaec5 with ``NUM_CLASSES = 81``,
``IMAGES_PER_GPU = 1`` (the list is ``../shared/mrcnn_reference/config.json``). Only inference values are
kept; training-only settings have no meaning here.
"""

from __future__ import annotations

from dataclasses import dataclass

from masklab.errors import UsageError

__all__ = ["MatterportConfig"]


@dataclass(frozen=True)
class MatterportConfig:
    """Inference settings, named as in matterport's ``Config``.

    ``MEAN_PIXEL`` is RGB in uint8 units. ``*_STD_DEV`` multiply the network's raw deltas
    ``(dy, dx, log dh, log dw)``. ``DETECTION_MIN_CONFIDENCE`` in [0, 1]; 0 keeps every class score
    (matterport skips the filter when it is falsy).
    """

    NUM_CLASSES: int = 81
    IMAGE_MIN_DIM: int = 800
    IMAGE_MAX_DIM: int = 1024
    IMAGE_MIN_SCALE: float = 0.0
    MEAN_PIXEL: tuple[float, float, float] = (123.7, 116.8, 103.9)
    BACKBONE_STRIDES: tuple[int, ...] = (4, 8, 16, 32, 64)
    TOP_DOWN_PYRAMID_SIZE: int = 256
    FPN_CLASSIF_FC_LAYERS_SIZE: int = 1024
    RPN_ANCHOR_SCALES: tuple[int, ...] = (32, 64, 128, 256, 512)
    RPN_ANCHOR_RATIOS: tuple[float, ...] = (0.5, 1.0, 2.0)
    RPN_ANCHOR_STRIDE: int = 1
    RPN_BBOX_STD_DEV: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)
    RPN_NMS_THRESHOLD: float = 0.7
    PRE_NMS_LIMIT: int = 6000
    POST_NMS_ROIS_INFERENCE: int = 1000
    POOL_SIZE: int = 7
    MASK_POOL_SIZE: int = 14
    BBOX_STD_DEV: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)
    DETECTION_MIN_CONFIDENCE: float = 0.7
    DETECTION_NMS_THRESHOLD: float = 0.3
    DETECTION_MAX_INSTANCES: int = 100

    def __post_init__(self) -> None:
        if not 0.0 <= self.DETECTION_MIN_CONFIDENCE <= 1.0:
            raise UsageError(f"DETECTION_MIN_CONFIDENCE must be in [0, 1], found {self.DETECTION_MIN_CONFIDENCE}")
        if not 0.0 <= self.DETECTION_NMS_THRESHOLD <= 1.0:
            raise UsageError(f"DETECTION_NMS_THRESHOLD must be in [0, 1], found {self.DETECTION_NMS_THRESHOLD}")
        if self.DETECTION_MAX_INSTANCES <= 0:
            raise UsageError(f"DETECTION_MAX_INSTANCES must be positive, found {self.DETECTION_MAX_INSTANCES}")
        if self.IMAGE_MAX_DIM % 64:
            raise UsageError(f"IMAGE_MAX_DIM must be a multiple of 64 (5 stride-2 stages), found {self.IMAGE_MAX_DIM}")

    @property
    def image_shape(self) -> tuple[int, int]:
        """The molded (square) network input size ``(H, W)`` in pixels."""
        return (self.IMAGE_MAX_DIM, self.IMAGE_MAX_DIM)
