"""A small test model whose outputs are well separated, for comparing backends and exports.

Random-weight ResNet Mask R-CNNs give distinct scores (unlike the random MobileNetV3 "small" model, whose
activations vanish and whose scores all tie), so "same detections" can be checked instance by instance.
ResNet-18 FPN at ~160-256 px keeps a forward pass, a trace and an export to a few seconds.
"""

from __future__ import annotations

import dataclasses

from masklab.models.loading import LoadedModel
from masklab.models.zoo import get_spec

CATEGORIES = ("__background__", "a", "b", "c")
SIZES = {"min_size": 160, "max_size": 256}


def r18_loaded(*, score_thresh: float = 0.0, max_detections: int = 8, seed: int = 7) -> LoadedModel:
    """A seeded random ResNet-18 FPN Mask R-CNN with 3 classes, as a LoadedModel (fresh module each call)."""
    import torch
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    torch.manual_seed(seed)
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5)
    module = MaskRCNN(
        backbone,
        num_classes=len(CATEGORIES),
        box_score_thresh=score_thresh,
        box_detections_per_img=max_detections,
        rpn_post_nms_top_n_test=200,
        **SIZES,
    ).eval()
    spec = dataclasses.replace(
        get_spec("small"), name="test_r18", arch="test_resnet18_fpn", categories=CATEGORIES, **SIZES
    )
    return LoadedModel(spec, module, f"random(seed={seed})")
