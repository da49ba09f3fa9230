"""matterport's Mask R-CNN (ResNet-101 + FPN, ``mask_rcnn_coco.h5``) running in PyTorch.

A port of the *inference* graph of matterport/Mask_RCNN (MIT licence) that reads the original Keras
``.h5`` weights and reproduces the original TF graph's detections (see ``tests/test_matterport.py``).
"""

from masklab.models.matterport.config import MatterportConfig
from masklab.models.matterport.h5 import is_matterport_h5, load_h5_weights
from masklab.models.matterport.network import MatterportMaskRCNN
from masklab.models.matterport.runtime import MatterportRuntime, build_matterport

__all__ = [
    "MatterportRuntime",
    "MatterportConfig",
    "MatterportMaskRCNN",
    "build_matterport",
    "is_matterport_h5",
    "load_h5_weights",
]
