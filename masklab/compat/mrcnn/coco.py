"""The tutorial's ``coco.CocoConfig`` (matterport ``samples/coco/coco.py``): 80 COCO classes + background."""

from __future__ import annotations

from masklab.compat.mrcnn.config import Config

__all__ = ["CocoConfig"]


class CocoConfig(Config):
    """Configuration for the MS COCO models."""

    NAME = "coco"
    IMAGES_PER_GPU = 2
    NUM_CLASSES = 1 + 80
