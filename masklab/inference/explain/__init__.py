"""See inside the model: one image's forward pass recorded stage by stage (:class:`Trace`).

    >>> trace = seg.explain("photo.jpg")                       # doctest: +SKIP
    >>> trace.rpn.proposals.shape, trace.box_head.counts       # (R, 4), {'candidates': ..., 'kept': ...}
    >>> trace.instances                                        # == seg("photo.jpg")

:func:`record` runs the runtime the Segmenter would use with hooks on the network's modules
(torchvision models, the small model) or keeps every stage of the matterport port's own run; an
exported runtime (OpenVINO, ONNX, TorchScript) or the fast runtime cannot be hooked, so
:func:`explain_runtime` gives the eager torch module of the same weights and a note saying so.
"""

from __future__ import annotations

import numpy as np

from masklab.errors import UsageError
from masklab.inference.explain.matterport import MatterportStages, record_matterport
from masklab.inference.explain.torchvision import TorchvisionStages, record_torchvision
from masklab.inference.explain.trace import (
    AnchorLevel,
    BoxHeadStage,
    FeatureLevel,
    InputStage,
    MaskStage,
    RoIStage,
    RPNStage,
    Trace,
)
from masklab.models.loading import LoadedModel
from masklab.models.matterport.runtime import MatterportRuntime
from masklab.runtime.torch import TorchRuntime
from masklab.structures.instances import Instances

__all__ = [
    "Trace", "InputStage", "FeatureLevel", "AnchorLevel", "RPNStage", "RoIStage", "BoxHeadStage", "MaskStage",
    "explain_runtime", "record", "build_trace",
]  # fmt: skip


def explain_runtime(runtime, loaded: LoadedModel, *, device: str) -> tuple[TorchRuntime | MatterportRuntime, str]:
    """The runtime to record and a note on how: ``runtime`` itself when it is the eager torch one (or the
    matterport port's), else the eager torch module of the same weights."""
    if type(runtime) in (TorchRuntime, MatterportRuntime):
        return runtime, f"recorded from the eager {runtime.name} runtime the segmenter uses"
    if loaded.module is None:
        raise UsageError(
            f"{loaded.weights_source} is an exported {loaded.export_format} file, which cannot be looked inside: "
            "explain the torch weights it was exported from (the .pth/.safetensors file or model name)"
        )
    note = (f"the segmenter runs {runtime.name} ({runtime.precision}), which cannot be hooked: explained with the "
            "eager torch module of the same weights (the fp32 reference that runtime is tested against)")
    if isinstance(runtime, MatterportRuntime):  # its networks in OpenVINO: the eager port of the same weights
        return MatterportRuntime(loaded.module, device=device), note
    return TorchRuntime(loaded.module, device=device), note


def record(runtime: TorchRuntime | MatterportRuntime, image: np.ndarray) -> TorchvisionStages | MatterportStages:
    """Run ``runtime`` on one RGB uint8 (H, W, 3) image with every stage recorded."""
    if isinstance(runtime, MatterportRuntime):
        return record_matterport(runtime, image)
    return record_torchvision(runtime, image)


def build_trace(stages: TorchvisionStages | MatterportStages, *, instances: Instances, model: str,
                categories: tuple[str, ...], note: str) -> Trace:
    """The :class:`Trace` of recorded ``stages``; ``instances`` are the final results (what ``seg(image)``
    returns, i.e. ``stages.detections`` named and filtered)."""
    features = stages.features()
    return Trace(model=model, categories=tuple(categories), note=note, input=stages.input(),
                 backbone=stages.backbone(), features=features, anchors=stages.anchors(), rpn=stages.rpn(),
                 roi=stages.roi(features), box_head=stages.box_head(), mask=stages.mask(), instances=instances)
