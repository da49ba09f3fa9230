"""The optional MaskIoU head of Mask Scoring R-CNN (Huang et al., CVPR 2019), on a torchvision Mask R-CNN.

A small network that regresses, for every detection, the IoU of its predicted mask with the object's
true mask. Its input is the mask branch's RoI features (float (R, C, 14, 14)) concatenated with the
predicted mask of the detection's class, max-pooled from 28x28 to 14x14 (probabilities in [0, 1]);
four 3x3 convolutions (the last with stride 2: 7x7), two fully connected layers and one linear output
per class, as in the paper (two convolutions on the ``small`` model: :func:`default_config`). Its
prediction for the detected class, clipped to [0, 1], becomes the detection's ``mask_iou``, which the
runtimes put into :attr:`~masklab.structures.detections.Detections.quality` (replacing the training-free
:mod:`masklab.structures.quality` score).

It is attached to an existing module without editing torchvision: :func:`attach_mask_iou_head` adds
``roi_heads.mask_iou_head`` (its weights are then ``roi_heads.mask_iou_head.*`` in the state dict) and
three forward hooks, all module-level functions that find the head through the module they hook (so a
``copy.deepcopy`` of the network, as the channels-last runtime makes, uses its own copy of the head):

- on ``roi_heads.mask_roi_pool``: keeps the boxes it pooled and the features it returned;
- on ``roi_heads.mask_predictor``: keeps the mask logits (training only);
- on ``roi_heads``: in eval mode adds ``"mask_iou"`` float (N,) in [0, 1] to every detection dict (the
  torch runtimes and the traced export core read it there); in training mode, when the head has a
  ``loss_fn`` (``masklab train`` gives it :func:`masklab.training.mask_iou.mask_iou_loss`), it adds
  ``"loss_mask_iou"`` to the losses torchvision returns. The loss is computed inside the model's forward,
  as DistributedDataParallel requires of every parameter's use.

Attach the head after :func:`masklab.models.roi_pool.use_fast_roi_pooling` (which replaces the pooler,
and with it the hook on it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["HEAD_NAME", "attach_mask_iou_head", "head_config", "config_from_state", "has_mask_iou_head",
           "default_config", "LOSS_NAME"]

#: the head's attribute on ``roi_heads`` (and its state-dict prefix after ``roi_heads.``)
HEAD_NAME = "mask_iou_head"
_PREFIX = f"roi_heads.{HEAD_NAME}."
_STASH = "_masklab_mask_iou_stash"
#: the head's loss in the dict torchvision's Mask R-CNN returns in training mode
LOSS_NAME = "loss_mask_iou"


def _head_class():
    import torch
    import torch.nn.functional as F
    from torch import nn

    class MaskIoUHead(nn.Module):
        """``(features (R, C, S, S), mask_probs (R, 1, 2S, 2S) in [0, 1]) -> (R, num_classes)`` predicted
        mask IoU per class (a linear regression: not clipped; S = 14 for torchvision's mask pooler)."""

        def __init__(self, *, in_channels: int, num_classes: int, conv_channels: int, fc_channels: int,
                     num_convs: int = 4, roi_size: int = 14) -> None:
            super().__init__()
            self.config = {"in_channels": in_channels, "num_classes": num_classes, "conv_channels": conv_channels,
                           "fc_channels": fc_channels, "num_convs": num_convs, "roi_size": roi_size}
            layers: list[nn.Module] = []
            for i in range(num_convs):
                stride = 2 if i == num_convs - 1 else 1  # the paper's last conv halves 14x14 to 7x7
                layers += [nn.Conv2d(in_channels + 1 if i == 0 else conv_channels, conv_channels, 3, stride, 1), nn.ReLU(inplace=True)]
            self.convs = nn.Sequential(*layers)
            side = (roi_size + 1) // 2
            self.fcs = nn.Sequential(nn.Linear(conv_channels * side * side, fc_channels), nn.ReLU(inplace=True),
                                     nn.Linear(fc_channels, fc_channels), nn.ReLU(inplace=True))
            self.predictor = nn.Linear(fc_channels, num_classes)
            #: ``loss_fn(roi_heads, kept) -> scalar tensor``, called in training mode (None: no loss); ``kept``:
            #: ``boxes`` (the positive RoIs per image, resized pixels), ``features``, ``logits``, ``targets``
            self.loss_fn = None
            # As mmdetection's MaskIoUHead: Kaiming convs, Xavier FCs, a small output layer.
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, nn.Linear):
                    nn.init.xavier_uniform_(m.weight)
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.zeros_(m.bias)
            nn.init.normal_(self.predictor.weight, std=0.01)

        def forward(self, features, mask_probs):
            pooled = F.max_pool2d(mask_probs.to(features.dtype), kernel_size=2, stride=2)
            x = self.convs(torch.cat([features, pooled], dim=1))
            return self.predictor(self.fcs(x.flatten(1)))

    return MaskIoUHead


def default_config(module) -> dict[str, int]:
    """The head's sizes for a torchvision ``MaskRCNN`` ``module``: the paper's (4 convolutions of 256
    channels, 1024-wide FC layers) on a 256-channel FPN. On a narrower one (the ``small`` model's 128),
    as that model's own heads: convolutions and FC layers as wide as the FPN, and 2 convolutions, as its
    mask head (its 14x14 convolutions over every positive RoI dominate a CPU training step: with 4, a
    step of the small model took ~30% longer than without the head, with 2 ~12%; 1.1 M parameters, the
    whole small model has 3.2 M)."""
    c = int(module.backbone.out_channels)
    wide = c >= 256
    return {"in_channels": c, "num_classes": int(module.roi_heads.mask_predictor.mask_fcn_logits.out_channels),
            "conv_channels": c, "fc_channels": 1024 if wide else c, "num_convs": 4 if wide else 2, "roi_size": 14}


def has_mask_iou_head(module) -> bool:
    return module is not None and hasattr(getattr(module, "roi_heads", None), HEAD_NAME)


def head_config(module) -> dict[str, int] | None:
    """The attached head's sizes (what a model card records), or None without a head."""
    return dict(getattr(module.roi_heads, HEAD_NAME).config) if has_mask_iou_head(module) else None


def config_from_state(state: Mapping[str, Any]) -> dict[str, int] | None:
    """The head's sizes read off a state dict's ``roi_heads.mask_iou_head.*`` shapes, or None when it
    has no head (a bare weights file says what it holds)."""
    convs = sorted(int(k[len(_PREFIX) + len("convs."):].split(".")[0]) for k in state
                   if k.startswith(_PREFIX + "convs.") and k.endswith(".weight"))
    if not convs:
        return None
    first, pred = state[f"{_PREFIX}convs.{convs[0]}.weight"], state[f"{_PREFIX}predictor.weight"]
    fc_in = int(state[f"{_PREFIX}fcs.0.weight"].shape[1])
    conv_channels = int(first.shape[0])
    side = int(round((fc_in // conv_channels) ** 0.5))
    return {"in_channels": int(first.shape[1]) - 1, "num_classes": int(pred.shape[0]), "conv_channels": conv_channels,
            "fc_channels": int(pred.shape[1]), "num_convs": len(convs), "roi_size": 2 * side}


def attach_mask_iou_head(module, config: Mapping[str, int] | None = None, *, loss=None):
    """Add a MaskIoU head (random weights) and its hooks to the torchvision ``MaskRCNN`` ``module``, in
    place; returns the head. ``config``: its sizes (:func:`head_config` / a card's ``mask_iou_head``;
    default :func:`default_config`); ``loss``: the head's ``loss_fn`` for training (see the module
    docstring). Raises ValueError when ``module`` already has one."""
    rh = module.roi_heads
    if hasattr(rh, HEAD_NAME):
        raise ValueError("this model already has a MaskIoU head")
    cfg = {**default_config(module), **dict(config or {})}
    head = _head_class()(**cfg)
    head.loss_fn = loss
    p = next(rh.parameters(), None)
    if p is not None:
        head.to(p.device)
    rh.add_module(HEAD_NAME, head)
    rh.mask_roi_pool.register_forward_hook(_keep_mask_features)
    rh.mask_predictor.register_forward_hook(_keep_mask_logits)
    rh.register_forward_hook(_after_roi_heads)
    return head


# -- hooks (module-level: a deep copy of the network keeps working with its own head) -----------------
def _keep_mask_features(pool, args, output) -> None:
    # MultiScaleRoIAlign(features, boxes: list of (K_i, 4) per image, image_shapes) -> (sum K_i, C, 14, 14)
    setattr(pool, _STASH, {"boxes": args[1], "features": output})


def _keep_mask_logits(predictor, args, output) -> None:
    if predictor.training:
        setattr(predictor, _STASH, output)  # (P, num_classes, 28, 28) logits of the positive RoIs


def _after_roi_heads(rh, args, output):
    pooled = rh.mask_roi_pool.__dict__.pop(_STASH, None)
    if pooled is None:
        raise RuntimeError("MaskIoU head: the mask pooler's hook did not run (was roi_heads.mask_roi_pool "
                           "replaced after attach_mask_iou_head? attach the head last)")
    result, losses = output
    if rh.training:
        logits = rh.mask_predictor.__dict__.pop(_STASH, None)
        targets = args[3] if len(args) > 3 else None
        loss_fn = getattr(rh, HEAD_NAME).loss_fn
        if loss_fn is None or targets is None or logits is None:
            return output
        return result, {**losses, LOSS_NAME: loss_fn(rh, {**pooled, "logits": logits, "targets": targets})}
    if not result:
        return output
    head = getattr(rh, HEAD_NAME)
    probs = result[0]["masks"] if len(result) == 1 else _cat([r["masks"] for r in result])
    labels = result[0]["labels"] if len(result) == 1 else _cat([r["labels"] for r in result])
    iou = head(pooled["features"], probs).gather(1, labels[:, None])[:, 0].clamp(0.0, 1.0)
    if len(result) == 1:  # the traced export core: no split with sizes baked into the trace
        result[0]["mask_iou"] = iou
    else:
        for r, part in zip(result, iou.split([len(r["labels"]) for r in result])):
            r["mask_iou"] = part
    return result, losses


def _cat(tensors):
    import torch

    return torch.cat(tensors)


