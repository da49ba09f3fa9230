"""The network being trained: its spec (the run's classes and input size), building it, the ``--init``
weights, ``--freeze`` and the train/eval resize."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import nn

from masklab.errors import UsageError, WeightsMismatchError
from masklab.models.loading import build_module
from masklab.models.roi_pool import use_fast_roi_pooling
from masklab.models.weights import ensure_weights, load_state_dict
from masklab.models.zoo import ModelSpec, WeightsSpec, get_spec
from masklab.settings import LOW_SCORE_THRESH, InferenceSettings
from masklab.training.config import TrainConfig

__all__ = ["train_spec", "build_model", "init_weights", "backbone_state_for", "apply_freeze", "train_sizes",
           "set_train_resize", "set_eval_resize"]

#: ImageNet trunk weights for ``--init backbone`` (torchvision's published files; sha256 prefixes as in
#: their file names). Downloaded through the same cache / sha256 / offline rules as the model weights.
_BACKBONES = {
    "torchvision_maskrcnn_v1": ("https://download.pytorch.org/models/resnet50-0676ba61.pth", "0676ba61", "resnet50-0676ba61.pth"),
    "torchvision_maskrcnn_v2": ("https://download.pytorch.org/models/resnet50-0676ba61.pth", "0676ba61", "resnet50-0676ba61.pth"),
    "maskrcnn_mobilenet_v3_fpn": (
        "https://download.pytorch.org/models/mobilenet_v3_large-8738ca79.pth", "8738ca79", "mobilenet_v3_large-8738ca79.pth",
    ),
}
#: The class-specific predictors: re-initialised for ``--init coco``, the only part that trains for ``--freeze heads``.
_CLASS_HEADS = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits.")


def train_spec(cfg: TrainConfig, class_names: Sequence[str]) -> ModelSpec:
    """``cfg.model``'s spec with the dataset's classes and the run's input size (named after the run dir)."""
    base = get_spec(cfg.model)
    return dataclasses.replace(
        base,
        name=Path(cfg.out).name or "custom",
        categories=("__background__",) + tuple(class_names),
        weights=None,
        min_size=cfg.min_size or base.min_size,
        max_size=cfg.max_size or base.max_size,
        published={},
        tags=("custom",),
        mrcnn_class_names=None,
        description=f"{base.description.split('.')[0]}, trained with masklab train on {cfg.data}",
    )


def build_model(spec: ModelSpec) -> nn.Module:
    """``spec``'s network with random weights, set up for training."""
    # A low score threshold while training: validation AP needs the low-confidence detections too.
    module = build_module(spec, InferenceSettings(model=spec.name, score_thresh=LOW_SCORE_THRESH))
    # RoIAlign's CPU backward in torchvision is single-threaded; this one gives the same gradients
    # from two matrix products (same forward, no parameters: checkpoints are unchanged).
    use_fast_roi_pooling(module)
    return module


def backbone_state_for(module: nn.Module, arch: str, state: dict) -> dict:
    """Map an ImageNet classifier's state dict onto ``module.backbone.body`` (keys the trunk lacks, e.g.
    the classifier, are dropped). Raises WeightsMismatchError when nothing fits."""
    body = module.backbone.body.state_dict()
    out = {}
    for k, v in state.items():
        key = k[len("features."):] if arch == "maskrcnn_mobilenet_v3_fpn" and k.startswith("features.") else k
        if key in body and tuple(body[key].shape) == tuple(v.shape):
            out[key] = v
    if len(out) < len([k for k in body if not k.endswith("num_batches_tracked")]) // 2:
        raise WeightsMismatchError(f"the ImageNet weights fit only {len(out)} of {len(body)} trunk tensors of {arch}")
    return out


def init_weights(module: nn.Module, cfg: TrainConfig, spec: ModelSpec) -> str:
    """Load the ``--init`` weights into ``module``; returns a description of where they came from."""
    if cfg.init == "scratch":
        return "scratch (random)"
    if cfg.init == "coco":
        return _init_coco(module, cfg)
    url, sha, fname = _BACKBONES[spec.arch]
    path = ensure_weights(WeightsSpec(url=url, sha256=sha, filename=fname, license="BSD-3-Clause (torchvision); ImageNet weights"))
    mapped = backbone_state_for(module, spec.arch, load_state_dict(path))
    module.backbone.body.load_state_dict(mapped, strict=False)
    return f"backbone ({fname}: {len(mapped)} trunk tensors)"


def _init_coco(module: nn.Module, cfg: TrainConfig) -> str:
    base = get_spec(cfg.model)
    if base.weights is None:
        raise UsageError(f"model {cfg.model!r} has no published COCO weights: use --init scratch or --init backbone")
    path = ensure_weights(base.weights)
    state = load_state_dict(path)
    # The standard recipe: keep everything, re-initialise the class-specific predictors.
    kept = {k: v for k, v in state.items() if not k.startswith(_CLASS_HEADS)}
    missing, unexpected = module.load_state_dict(kept, strict=False)
    bad = [k for k in missing if not k.startswith(_CLASS_HEADS)]
    if bad or unexpected:
        raise WeightsMismatchError(f"COCO weights {path} do not fit {cfg.model}: missing {bad[:3]}, unexpected {unexpected[:3]}")
    return f"coco ({path.name}, class-specific heads replaced)"


def apply_freeze(module: nn.Module, mode: str) -> None:
    """``none``: all train; ``backbone``: the trunk (``backbone.body``) is frozen; ``heads``: only the
    class-specific box and mask predictors (and a MaskIoU head, new like them) train. Frozen BatchNorm layers
    also stop updating statistics."""
    for p in module.parameters():
        p.requires_grad_(mode == "none")
    if mode == "backbone":
        for name, p in module.named_parameters():
            p.requires_grad_(not name.startswith("backbone.body."))
    elif mode == "heads":
        rh = module.roi_heads
        for sub in (rh.box_predictor, rh.mask_predictor, getattr(rh, "mask_iou_head", None)):
            for p in (sub.parameters() if sub is not None else ()):
                p.requires_grad_(True)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            frozen = not any(p.requires_grad for p in m.parameters(recurse=False))
            m.eval() if frozen else m.train()


def train_sizes(spec: ModelSpec, cfg: TrainConfig) -> list[int]:
    """The shorter sides (pixels) training picks from: 5 steps over ``min_size * (1 +- scale_jitter)``
    with augmentation, else ``[min_size]``."""
    if not cfg.augment:
        return [spec.min_size]
    return sorted({int(round(spec.min_size * (1 + cfg.scale_jitter * f))) for f in np.linspace(-1, 1, 5)})


def set_train_resize(module: nn.Module, spec: ModelSpec, cfg: TrainConfig, sizes: list[int]) -> None:
    """Multi-scale training (scale jitter): torchvision's transform picks a random shorter side per batch
    from its ``min_size`` tuple while training and uses the last entry when evaluating."""
    tf = module.transform
    tf.min_size = tuple(s for s in sizes if s != spec.min_size) + (spec.min_size,) if len(sizes) > 1 else (spec.min_size,)
    tf.max_size = int(round(spec.max_size * (1 + cfg.scale_jitter))) if cfg.augment else spec.max_size


def set_eval_resize(module: nn.Module, spec: ModelSpec) -> None:
    """The model's own input size, as inference uses it."""
    module.transform.min_size, module.transform.max_size = (spec.min_size,), spec.max_size
