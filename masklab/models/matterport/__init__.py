"""matterport's Mask R-CNN (ResNet-101 + FPN, ``mask_rcnn_coco.h5``) running in PyTorch.

A port of the *inference* graph of matterport/Mask_RCNN (MIT licence) that reads the original Keras
``.h5`` weights and reproduces the original TF graph's detections (see ``tests/test_matterport.py``).
The names below load on first use (PEP 562), so that reading the config or sniffing an ``.h5`` file
imports no torch.
"""

from __future__ import annotations

import importlib

__all__ = [
    "MatterportRuntime",
    "MatterportConfig",
    "MatterportMaskRCNN",
    "build_matterport",
    "is_matterport_h5",
    "load_h5_weights",
]

_WHERE = {
    "MatterportConfig": "config",
    "is_matterport_h5": "h5",
    "load_h5_weights": "h5",
    "MatterportMaskRCNN": "network",
    "MatterportRuntime": "runtime",
    "build_matterport": "runtime",
}


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
