"""A small test model whose outputs are well separated, for comparing backends and exports.

Random-weight ResNet Mask R-CNNs give distinct scores (unlike the random MobileNetV3 "small" model, whose
activations vanish and whose scores all tie), so "same detections" can be checked instance by instance.
ResNet-18 FPN at ~160-256 px keeps a forward pass, a trace and an export to a few seconds.
"""

from __future__ import annotations

import dataclasses
import functools
import tempfile
from pathlib import Path

from masklab.models.loading import LoadedModel
from masklab.models.source import ModelSource
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
    return LoadedModel(spec=spec, card=spec.card(), module=module, weights_source=f"random(seed={seed})",
                       source=ModelSource("zoo", name=spec.name, weights="random"))


_EXPORT_DIR: list = []


@functools.cache
def r18_exports(score_thresh: float = 0.0) -> dict[str, Path]:
    """The r18 test model exported to every format whose runtime is installed, from one trace, once per
    test session (exports cost seconds each; test_export and test_backends share them)."""
    import importlib.util

    from masklab.export import export_loaded, trace_core

    if not _EXPORT_DIR:
        _EXPORT_DIR.append(tempfile.TemporaryDirectory(prefix="masklab-r18-exports-"))
    out = Path(_EXPORT_DIR[0].name) / f"thresh{score_thresh}"
    loaded = r18_loaded(score_thresh=score_thresh)
    traced = trace_core(loaded.module)
    paths = {"torchscript": out / "r18.pt"}
    if importlib.util.find_spec("onnx") and importlib.util.find_spec("onnxruntime"):
        paths["onnx"] = out / "r18.onnx"
    if importlib.util.find_spec("openvino"):
        paths["openvino"] = out / "r18.xml"
    for fmt, path in paths.items():
        export_loaded(loaded, fmt=fmt, out=path, traced=traced)
    return paths
