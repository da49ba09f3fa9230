"""matterport's Mask R-CNN inference graph (ResNet-101 + FPN, ``mrcnn/model.py``) as torch modules.

Every weight-holding module is named exactly as the Keras layer it replaces (``res4w_branch2c``,
``fpn_p2``, ``mrcnn_mask_bn3``...), so the ``.h5`` loader maps layer names to modules one to one.
Tensors are NCHW float32; boxes are normalized ``(y1, x1, y2, x2)`` (see :mod:`.ops`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from masklab.errors import UsageError
from masklab.models.matterport import ops
from masklab.models.matterport.config import MatterportConfig

__all__ = ["MatterportMaskRCNN", "HeadOutputs", "heads_from_features", "detect_and_mask", "normalized_window"]

BN_EPS = 1e-3  # Keras' BatchNormalization default (torch's 1e-5 shifts C2 by ~1% of its std)

# ResNet-101 stages: (stage, number of blocks, filters)
_STAGES = ((2, 3, (64, 64, 256)), (3, 4, (128, 128, 512)), (4, 23, (256, 256, 1024)), (5, 3, (512, 512, 2048)))


def _bn(ch: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(ch, eps=BN_EPS)


def tf_softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis as TF's CPU kernel computes it: ``exp(x - max) * (1 / sum)``.

    Multiplying by the reciprocal (not dividing) rounds like TF. Exactly tied RPN scores still depend on
    the last bit of the logits, so the order of tied proposals may differ from TF's (results do not).
    """
    e = torch.exp(x - x.amax(dim=-1, keepdim=True))
    return e * torch.reciprocal(e.sum(dim=-1, keepdim=True))


class Bottleneck:
    """matterport's ``conv_block``/``identity_block`` (Caffe style: the stride is on the first 1x1 conv).

    Not a module itself: its layers are registered on ``parent`` under their Keras names
    (``res3a_branch2a``...), so the backbone's state dict keys are the Keras layer names.
    """

    def __init__(self, parent: nn.Module, stage: int, block: str, in_ch: int, filters, stride: int, shortcut: bool):
        f1, f2, f3 = filters
        conv, bn = f"res{stage}{block}_branch", f"bn{stage}{block}_branch"
        self.names = (conv, bn)
        self.shortcut = shortcut
        for name, module in (
            (conv + "2a", nn.Conv2d(in_ch, f1, 1, stride=stride)),
            (bn + "2a", _bn(f1)),
            (conv + "2b", nn.Conv2d(f1, f2, 3, padding=1)),  # stride 1, "same" = symmetric 1
            (bn + "2b", _bn(f2)),
            (conv + "2c", nn.Conv2d(f2, f3, 1)),
            (bn + "2c", _bn(f3)),
        ):
            parent.add_module(name, module)
        if shortcut:
            parent.add_module(conv + "1", nn.Conv2d(in_ch, f3, 1, stride=stride))
            parent.add_module(bn + "1", _bn(f3))
        self.parent = parent

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        p, (conv, bn) = self.parent, self.names
        y = F.relu(getattr(p, bn + "2a")(getattr(p, conv + "2a")(x)))
        y = F.relu(getattr(p, bn + "2b")(getattr(p, conv + "2b")(y)))
        y = getattr(p, bn + "2c")(getattr(p, conv + "2c")(y))
        s = getattr(p, bn + "1")(getattr(p, conv + "1")(x)) if self.shortcut else x
        return F.relu(y + s)


def _same_maxpool_3x3_s2(x: torch.Tensor) -> torch.Tensor:
    """Keras ``MaxPooling2D(3, 2, padding="same")``: TF pads the *after* side first (0 before, 1 after on
    even sizes), unlike torch's symmetric ``padding=1``."""
    pads = []
    for n in (x.shape[-1], x.shape[-2]):  # F.pad order: last dim first
        out = -(-n // 2)
        total = max((out - 1) * 2 + 3 - n, 0)
        pads += [total // 2, total - total // 2]
    return F.max_pool2d(F.pad(x, pads, value=float("-inf")), 3, 2)


class ResNet101(nn.Module):
    """matterport's ``resnet_graph(architecture="resnet101", stage5=True)``; returns C2..C5."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3)  # ZeroPadding2D(3) + "valid" 7x7 conv
        self.bn_conv1 = _bn(64)
        self.blocks: list[list[Bottleneck]] = []
        in_ch = 64
        for stage, n, filters in _STAGES:
            stage_blocks = []
            for i in range(n):
                block = chr(ord("a") + i)
                stride = 1 if (i > 0 or stage == 2) else 2
                stage_blocks.append(Bottleneck(self, stage, block, in_ch, filters, stride, shortcut=i == 0))
                in_ch = filters[2]
            self.blocks.append(stage_blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = _same_maxpool_3x3_s2(F.relu(self.bn_conv1(self.conv1(x))))
        outs = []
        for stage_blocks in self.blocks:
            for b in stage_blocks:
                x = b(x)
            outs.append(x)
        return outs


class FPN(nn.Module):
    """1x1 laterals, nearest 2x upsampling + add, 3x3 outputs; P6 = P5 subsampled by 2."""

    def __init__(self, size: int = 256) -> None:
        super().__init__()
        for i, ch in zip((5, 4, 3, 2), (2048, 1024, 512, 256)):
            self.add_module(f"fpn_c{i}p{i}", nn.Conv2d(ch, size, 1))
            self.add_module(f"fpn_p{i}", nn.Conv2d(size, size, 3, padding=1))

    def forward(self, c: list[torch.Tensor]) -> list[torch.Tensor]:
        c2, c3, c4, c5 = c
        p5 = self.fpn_c5p5(c5)
        p4 = F.interpolate(p5, scale_factor=2, mode="nearest") + self.fpn_c4p4(c4)
        p3 = F.interpolate(p4, scale_factor=2, mode="nearest") + self.fpn_c3p3(c3)
        p2 = F.interpolate(p3, scale_factor=2, mode="nearest") + self.fpn_c2p2(c2)
        p5_out = self.fpn_p5(p5)
        return [self.fpn_p2(p2), self.fpn_p3(p3), self.fpn_p4(p4), p5_out, p5_out[:, :, ::2, ::2]]


class RPN(nn.Module):
    """The shared RPN head (Keras group ``rpn_model``) applied to every level."""

    def __init__(self, anchors_per_location: int = 3, depth: int = 256) -> None:
        super().__init__()
        self.rpn_conv_shared = nn.Conv2d(depth, 512, 3, padding=1)
        self.rpn_class_raw = nn.Conv2d(512, 2 * anchors_per_location, 1)
        self.rpn_bbox_pred = nn.Conv2d(512, 4 * anchors_per_location, 1)

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (fg probabilities (B, A), raw deltas (B, A, 4)), anchors flattened level, y, x, ratio."""
        probs, deltas = [], []
        for p in features:
            shared = F.relu(self.rpn_conv_shared(p))
            b = p.shape[0]
            # Keras reshapes NHWC, so (y, x, anchor) order: permute before flattening.
            logits = self.rpn_class_raw(shared).permute(0, 2, 3, 1).reshape(b, -1, 2)
            probs.append(tf_softmax(logits)[..., 1])
            deltas.append(self.rpn_bbox_pred(shared).permute(0, 2, 3, 1).reshape(b, -1, 4))
        return torch.cat(probs, dim=1), torch.cat(deltas, dim=1)


class ClassifierHead(nn.Module):
    """``fpn_classifier_graph`` after pooling: 7x7 valid conv (= FC), BN, ReLU, 1x1, BN, ReLU, two Dense."""

    def __init__(self, num_classes: int, pool: int = 7, fc: int = 1024, depth: int = 256) -> None:
        super().__init__()
        self.mrcnn_class_conv1 = nn.Conv2d(depth, fc, pool)
        self.mrcnn_class_bn1 = _bn(fc)
        self.mrcnn_class_conv2 = nn.Conv2d(fc, fc, 1)
        self.mrcnn_class_bn2 = _bn(fc)
        self.mrcnn_class_logits = nn.Linear(fc, num_classes)
        self.mrcnn_bbox_fc = nn.Linear(fc, num_classes * 4)
        self.num_classes = num_classes

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(R, C, 7, 7) -> (probs (R, K), raw deltas (R, K, 4))."""
        # The 7x7 "valid" conv over a 7x7 input is an FC over the (c, h, w)-flattened ROI: one GEMM.
        conv1 = self.mrcnn_class_conv1
        x = F.linear(pooled.flatten(1), conv1.weight.flatten(1), conv1.bias)[:, :, None, None]
        x = F.relu(self.mrcnn_class_bn1(x))
        x = F.relu(self.mrcnn_class_bn2(self.mrcnn_class_conv2(x))).flatten(1)
        probs = tf_softmax(self.mrcnn_class_logits(x))
        return probs, self.mrcnn_bbox_fc(x).reshape(-1, self.num_classes, 4)


class MaskHead(nn.Module):
    """``build_fpn_mask_graph`` after pooling: 4x (3x3 conv, BN, ReLU), 2x2 deconv + ReLU, 1x1 + sigmoid."""

    def __init__(self, num_classes: int, depth: int = 256) -> None:
        super().__init__()
        for i in range(1, 5):
            self.add_module(f"mrcnn_mask_conv{i}", nn.Conv2d(depth, 256, 3, padding=1))
            self.add_module(f"mrcnn_mask_bn{i}", _bn(256))
        self.mrcnn_mask_deconv = nn.ConvTranspose2d(256, 256, 2, stride=2)
        self.mrcnn_mask = nn.Conv2d(256, num_classes, 1)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """(N, C, 14, 14) -> sigmoid masks (N, K, 28, 28)."""
        x = pooled
        for i in range(1, 5):
            x = F.relu(getattr(self, f"mrcnn_mask_bn{i}")(getattr(self, f"mrcnn_mask_conv{i}")(x)))
        x = F.relu(self.mrcnn_mask_deconv(x))
        return torch.sigmoid(self.mrcnn_mask(x))


@dataclass
class HeadOutputs:
    """Everything one image's forward pass produces (one image; normalized boxes).

    ``features``: [P2..P6] (1, 256, S/s, S/s) for strides 4..64; ``backbone``: [C2..C5]; ``rpn_probs`` (A,) fg probability; ``rpn_deltas`` (A, 4)
    raw; ``proposals`` (R, 4) zero-padded and ``proposal_scores`` (R,) their fg probabilities;
    ``class_probs`` (R, K); ``box_deltas`` (R, K, 4) raw.
    """

    features: list[torch.Tensor]
    backbone: list[torch.Tensor]
    rpn_probs: torch.Tensor
    rpn_deltas: torch.Tensor
    proposals: torch.Tensor
    proposal_scores: torch.Tensor
    class_probs: torch.Tensor
    box_deltas: torch.Tensor


def heads_from_features(
    features: list[torch.Tensor],
    rpn_probs: torch.Tensor,
    rpn_deltas: torch.Tensor,
    *,
    classifier,
    anchors: torch.Tensor,
    config: MatterportConfig,
    backbone: list[torch.Tensor] | None = None,
) -> HeadOutputs:
    """Proposal layer, pyramid ROI align and ``classifier`` on one image's features.

    ``features``: [P2..P6] (1, 256, S/s, S/s); ``rpn_probs`` (A,), ``rpn_deltas`` (A, 4) raw;
    ``classifier``: pooled (R, 256, 7, 7) -> (probs (R, K), raw deltas (R, K, 4)) (the torch
    :class:`ClassifierHead`, or an exported copy of it).
    """
    proposals, proposal_scores = ops.proposal_layer(rpn_probs, rpn_deltas, anchors, config)
    pooled = ops.pyramid_roi_align(features[:4], proposals, config.POOL_SIZE, image_hw=config.image_shape)
    probs, deltas = classifier(pooled)
    return HeadOutputs(features, backbone or [], rpn_probs, rpn_deltas, proposals, proposal_scores, probs, deltas)


def normalized_window(window_px, image_hw: tuple[int, int], device=None) -> torch.Tensor:
    """Pixel window ``(y1, x1, y2, x2)`` -> normalized float32 (4,), as ``norm_boxes_graph``."""
    h, w = image_hw
    win = torch.tensor(window_px, dtype=torch.float32, device=device)
    scale = torch.tensor([h, w, h, w], dtype=torch.float32, device=device) - 1.0
    return (win - torch.tensor([0.0, 0.0, 1.0, 1.0], device=device)) / scale


def detect_and_mask(
    heads: HeadOutputs, window_px, *, mask_head, config: MatterportConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Detection layer + ``mask_head`` (pooled (N, 256, 14, 14) -> sigmoid (N, K, 28, 28)). Returns
    (detections (D, 6) zero-padded, as :func:`ops.detection_layer`; masks (n, 28, 28) float32, the
    sigmoid mask of each non-padding row's class)."""
    window = normalized_window(window_px, config.image_shape, heads.proposals.device)
    det = ops.detection_layer(heads.proposals, heads.class_probs, heads.box_deltas, window, config)
    n = int((det[:, 4] != 0).long().cumprod(0).sum())  # rows before the first class-0 (padding) row
    if n == 0:
        return det, det.new_zeros((0, 28, 28))
    pooled = ops.pyramid_roi_align(heads.features[:4], det[:n, :4], config.MASK_POOL_SIZE, image_hw=config.image_shape)
    masks = mask_head(pooled)
    return det, masks[torch.arange(n, device=masks.device), det[:n, 4].long()]


class MatterportMaskRCNN(nn.Module):
    """The whole inference graph. Weights: :func:`masklab.models.matterport.h5.load_h5_weights`.

    Split in two steps so that the detection threshold can change without re-running the network:
    :meth:`forward_heads` (backbone -> classifier) and :meth:`detect_and_mask` (detection layer ->
    28x28 masks of each detection's class). :meth:`features` is the part with most of the arithmetic
    (backbone, FPN, RPN head), the one an export converts together with the two heads.
    """

    def __init__(self, config: MatterportConfig | None = None) -> None:
        super().__init__()
        self.config = config or MatterportConfig()
        k = self.config.NUM_CLASSES
        self.backbone = ResNet101()
        self.fpn = FPN(self.config.TOP_DOWN_PYRAMID_SIZE)
        self.rpn = RPN(len(self.config.RPN_ANCHOR_RATIOS), self.config.TOP_DOWN_PYRAMID_SIZE)
        self.classifier = ClassifierHead(k, self.config.POOL_SIZE, self.config.FPN_CLASSIF_FC_LAYERS_SIZE)
        self.mask_head = MaskHead(k, self.config.TOP_DOWN_PYRAMID_SIZE)
        self._anchors = torch.from_numpy(ops.generate_anchors(self.config))  # not a buffer: never in weights

    def anchors(self, device: torch.device) -> torch.Tensor:
        """All anchors, float32 (A, 4) normalized, on ``device``."""
        if self._anchors.device != device:
            self._anchors = self._anchors.to(device)
        return self._anchors

    def check_input(self, image: torch.Tensor) -> None:
        if image.ndim != 4 or image.shape[0] != 1 or tuple(image.shape[-2:]) != self.config.image_shape:
            raise UsageError(
                f"expected a (1, 3, {self.config.IMAGE_MAX_DIM}, {self.config.IMAGE_MAX_DIM}) "
                f"molded image, found {tuple(image.shape)}"
            )

    def features(self, image: torch.Tensor):
        """``image`` (1, 3, S, S) -> (C2..C5, P2..P6, fg probabilities (1, A), raw deltas (1, A, 4))."""
        c = self.backbone(image)
        p = self.fpn(c)
        rpn_probs, rpn_deltas = self.rpn(p)
        return c, p, rpn_probs, rpn_deltas

    def forward_heads(self, image: torch.Tensor) -> HeadOutputs:
        """``image``: float32 (1, 3, S, S), the molded input (RGB minus ``MEAN_PIXEL``)."""
        self.check_input(image)
        c, p, rpn_probs, rpn_deltas = self.features(image)
        return heads_from_features(
            p, rpn_probs[0], rpn_deltas[0], classifier=self.classifier, anchors=self.anchors(image.device),
            config=self.config, backbone=c,
        )

    def normalized_window(self, window_px) -> torch.Tensor:
        """Pixel window ``(y1, x1, y2, x2)`` -> normalized float32 (4,), as ``norm_boxes_graph``."""
        return normalized_window(window_px, self.config.image_shape, self.fpn.fpn_p2.weight.device)

    def detect_and_mask(
        self, heads: HeadOutputs, window_px, config: MatterportConfig | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Detection layer + mask head (see the module-level :func:`detect_and_mask`)."""
        return detect_and_mask(heads, window_px, mask_head=self.mask_head, config=config or self.config)
