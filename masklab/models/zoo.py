"""The model table: every model masklab knows, described by its own entry.

A :class:`ModelSpec` says how to build the network, which categories its outputs index, how it
pre-processes images, what accuracy its published weights reach, and where those weights come from
(URL, sha256, licence). ``num_classes`` always comes from ``categories``, never from a second constant.

Adding a model = adding one entry to ``MODELS`` (a plain dict; no registry decorators).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from masklab.errors import UsageError
from masklab.models.card import ModelCard, WeightsRef
from masklab.models.categories import COCO_MRCNN, COCO_TORCHVISION
from masklab.models.matterport.config import MatterportConfig
from masklab.models.weights import WeightsSpec
from masklab.settings import DEFAULT_MODEL

__all__ = ["WeightsSpec", "ModelSpec", "MODELS", "BUNDLED", "DEFAULT_MODEL", "get_spec", "bundled_model", "model_names"]


@dataclass(frozen=True)
class ModelSpec:
    """One model entry.

    Attributes:
        name: the name users type (``--model``).
        arch: architecture family, used to build the module and to recognise state dicts.
        categories: index = the model's class id; ``"__background__"`` at 0; ``"N/A"`` marks unused ids.
        weights: published pretrained weights, or None (train your own).
        min_size, max_size: input resize (shorter side to ``min_size``, longer side at most ``max_size``).
        published: published accuracy, e.g. ``{"box_ap": 47.4, "mask_ap": 41.8, "dataset": "COCO val2017"}``.
        tags: e.g. ``("coco", "default")`` or ``("small",)``.
        mrcnn_class_names: the tutorial-style ``class_names`` (``"BG"`` first) that ``detect()`` indexes.
        score_thresh, nms_thresh, max_detections, proposals: the architecture's post-processing defaults
            (what a setting of None means; see :mod:`masklab.settings`).
        train_lr: ``masklab train``'s default peak AdamW learning rate from scratch or an ImageNet
            backbone, at an effective batch of up to 8 (larger batches scale it linearly).
    """

    name: str
    arch: str
    categories: tuple[str, ...]
    build: Callable[..., object] = field(repr=False, compare=False)
    weights: WeightsSpec | None = None
    min_size: int = 800
    max_size: int = 1333
    published: dict = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    description: str = ""
    license: str = ""
    mrcnn_class_names: tuple[str, ...] | None = None
    #: default minimum score when the user gives none (matterport's DETECTION_MIN_CONFIDENCE is 0.7)
    score_thresh: float = 0.5
    nms_thresh: float = 0.5
    max_detections: int = 100
    proposals: int = 1000
    train_lr: float = 1e-3

    @property
    def num_classes(self) -> int:
        """Number of outputs of the classifier, background included."""
        return len(self.categories)

    @property
    def class_names(self) -> tuple[str, ...]:
        """The tutorial's ``class_names``: ``"BG"`` then every real category, in class-id order."""
        if self.mrcnn_class_names is not None:
            return self.mrcnn_class_names
        return ("BG",) + tuple(c for c in self.categories[1:] if c != "N/A")

    def card(self) -> ModelCard:
        """This entry's :class:`~masklab.models.card.ModelCard` (every default filled in)."""
        w = self.weights
        return ModelCard(
            name=self.name,
            arch=self.arch,
            categories=self.categories,
            min_size=self.min_size,
            max_size=self.max_size,
            score_thresh=self.score_thresh,
            nms_thresh=self.nms_thresh,
            max_detections=self.max_detections,
            proposals=self.proposals,
            weights=None if w is None else WeightsRef(file=w.filename, url=w.url, sha256=w.sha256 or None, size_bytes=w.size_bytes),
            metrics=dict(self.published),
            tags=self.tags,
            description=self.description,
            license=self.license,
            class_names=self.mrcnn_class_names,
        )


#: InferenceSettings field -> torchvision ``MaskRCNN`` keyword (other keywords pass through unchanged)
_TV_KEYWORDS = {
    "score_thresh": "box_score_thresh",
    "nms_thresh": "box_nms_thresh",
    "max_detections": "box_detections_per_img",
    "proposals": "rpn_post_nms_top_n_test",
}


def _tv(options: dict) -> dict:
    return {_TV_KEYWORDS.get(k, k): v for k, v in options.items() if v is not None}


def _build_tv_v1(*, num_classes: int, min_size: int, max_size: int, **options):
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    return maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=num_classes, min_size=min_size, max_size=max_size, **_tv(options)
    )


def _build_tv_v2(*, num_classes: int, min_size: int, max_size: int, **options):
    from torchvision.models.detection import maskrcnn_resnet50_fpn_v2

    return maskrcnn_resnet50_fpn_v2(
        weights=None, weights_backbone=None, num_classes=num_classes, min_size=min_size, max_size=max_size, **_tv(options)
    )


#: Width of the small model's FPN and heads. Chosen so the whole network is ~3.2 M parameters (a 6.5 MB
#: fp16 file that ships in the repo) while still training well on a CPU.
_SMALL_CHANNELS = 128
_SMALL_REPRESENTATION = 128


def _build_small(*, num_classes: int, min_size: int, max_size: int, **options):
    """Mask R-CNN on a MobileNetV3-Large FPN backbone: ~10x less arithmetic than ResNet-50, for fast CPU
    training on your own classes (no published COCO weights).

    Differences from torchvision's MobileNetV3 detectors, all for small images and training from scratch:

    - FPN levels at strides 8, 16 and 32 (+ a pooled level) instead of two stride-32 maps, so objects of
      ~15 px are still seen; the trunk stops after its stride-32 stage (the 960-channel tail is dropped).
    - Trainable BatchNorm everywhere, heads included (as torchvision's ResNet-50 v2 recipe): frozen BN
      cannot normalise a network trained from random weights, and BN in the box and mask heads lets
      them learn at twice the learning rate. A from-scratch sweep on the step-5 benchmark set (1000
      steps of 4 images, no augmentation) gave val mask AP50 0.56 with BN heads at lr 2e-3 against 0.30
      for the plain MLP box head and 4-conv mask head at lr 1e-3.
    - Box head: two 3x3 conv+BN layers then one 128-wide FC layer; mask head: two conv+BN layers (not
      four: on a CPU the mask head's 14x14 convolutions over every positive RoI were the largest cost).
    - 128-channel FPN and heads; fewer proposals and sampled RoIs (64 per image) than the ResNet-50
      recipe, which on 2 CPU cores makes a training step about 1.3x faster.
    """
    from torch import nn
    from torchvision.models import mobilenet_v3_large
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    c, r = _SMALL_CHANNELS, _SMALL_REPRESENTATION
    features = mobilenet_v3_large(weights=None, norm_layer=nn.BatchNorm2d).features
    # Stage starts (blocks that halve the resolution): 4 -> stride 8, 7 -> stride 16, 13 -> stride 32.
    return_layers = {"4": "0", "7": "1", "13": "2"}
    in_channels = [features[int(k)].out_channels for k in return_layers]
    backbone = BackboneWithFPN(features, return_layers, in_channels, c, extra_blocks=LastLevelMaxPool())
    sizes = ((16, 32, 64, 128, 256),) * 4  # every FPN level sees every anchor size
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    defaults = {
        "rpn_pre_nms_top_n_train": 1000,
        "rpn_post_nms_top_n_train": 500,
        "rpn_pre_nms_top_n_test": 500,  # test-time proposals kept after NMS: the entry's ``proposals`` (300)
        "box_batch_size_per_image": 64,
    }
    kwargs = {**defaults, **_tv(options)}
    return MaskRCNN(
        backbone,
        num_classes=None,
        rpn_anchor_generator=anchors,
        box_head=FastRCNNConvFCHead((c, 7, 7), [c, c], [r], norm_layer=nn.BatchNorm2d),
        box_predictor=FastRCNNPredictor(r, num_classes),
        mask_head=MaskRCNNHeads(c, (c, c), 1, norm_layer=nn.BatchNorm2d),
        mask_predictor=MaskRCNNPredictor(c, c, num_classes),
        min_size=min_size,
        max_size=max_size,
        **kwargs,
    )


_TV_LICENSE = "BSD-3-Clause (torchvision code); weights trained on COCO (CC BY 4.0 annotations)"

MODELS: dict[str, ModelSpec] = {
    "maskrcnn_resnet50_fpn_v2": ModelSpec(
        name="maskrcnn_resnet50_fpn_v2",
        arch="torchvision_maskrcnn_v2",
        categories=COCO_TORCHVISION,
        build=_build_tv_v2,
        weights=WeightsSpec(
            url="https://download.pytorch.org/models/maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth",
            sha256="73cbd0190fcbe3ba339921fbce2c3a0b6bb9126c9a133c85e43a2a8e060a109e",
            filename="maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth",
            size_bytes=185_828_065,
            license=_TV_LICENSE,
        ),
        published={"box_ap": 47.4, "mask_ap": 41.8, "dataset": "COCO val2017"},
        tags=("coco", "default"),
        description="Mask R-CNN, ResNet-50 FPN v2 (torchvision, improved recipe). The default.",
        license=_TV_LICENSE,
        mrcnn_class_names=COCO_MRCNN,
    ),
    "maskrcnn_resnet50_fpn": ModelSpec(
        name="maskrcnn_resnet50_fpn",
        arch="torchvision_maskrcnn_v1",
        categories=COCO_TORCHVISION,
        build=_build_tv_v1,
        weights=WeightsSpec(
            url="https://download.pytorch.org/models/maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth",
            sha256="bf2d0c1e",  # torchvision publishes only this prefix of the sha256 (in the file name)
            filename="maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth",
            size_bytes=178_090_079,
            license=_TV_LICENSE,
        ),
        published={"box_ap": 37.9, "mask_ap": 34.6, "dataset": "COCO val2017"},
        tags=("coco",),
        description="Mask R-CNN, ResNet-50 FPN (torchvision, original recipe). Faster, less accurate.",
        license=_TV_LICENSE,
        mrcnn_class_names=COCO_MRCNN,
    ),
}

#: Architectures without published weights: trained with ``masklab train``. ``categories`` are a
#: placeholder that training replaces with the dataset's classes.
MODELS["small"] = ModelSpec(
    name="small",
    arch="maskrcnn_mobilenet_v3_fpn",
    categories=("__background__", "object"),
    build=_build_small,
    weights=None,
    min_size=512,
    max_size=768,
    tags=("small",),
    proposals=300,  # the builder's rpn_post_nms_top_n_test
    train_lr=2e-3,
    description="Mask R-CNN, MobileNetV3-Large FPN: small and fast, for training on your own classes on a CPU.",
    license="BSD-3-Clause (torchvision code)",
)


def _build_matterport(*, num_classes: int, **options):
    """matterport's ResNet-101 Mask R-CNN graph in PyTorch (random weights; load a ``.h5`` into it)."""
    from masklab.models.matterport.entry import build_module

    return build_module(num_classes=num_classes, **options)


_MP = MatterportConfig()

#: The classic tutorial's weights (matterport/Mask_RCNN release v2.0), run by a PyTorch port of its graph.
#: matterport publishes no checksum; the sha256 is left empty (unverified) and only the size is recorded.
MODELS["matterport_r101_coco"] = ModelSpec(
    name="matterport_r101_coco",
    arch="matterport_resnet101",
    categories=COCO_MRCNN,
    build=_build_matterport,
    weights=WeightsSpec(
        url="https://github.com/matterport/Mask_RCNN/releases/download/v2.0/mask_rcnn_coco.h5",
        sha256="",
        filename="mask_rcnn_coco.h5",
        size_bytes=257_557_808,
        license="MIT",
    ),
    # the port's defaults are matterport's own config (the tutorial's DETECTION_MIN_CONFIDENCE 0.7...)
    min_size=_MP.IMAGE_MIN_DIM,
    max_size=_MP.IMAGE_MAX_DIM,
    score_thresh=_MP.DETECTION_MIN_CONFIDENCE,
    nms_thresh=_MP.DETECTION_NMS_THRESHOLD,
    max_detections=_MP.DETECTION_MAX_INSTANCES,
    proposals=_MP.POST_NMS_ROIS_INFERENCE,
    published={"box_ap": 34.7, "dataset": "COCO minival (matterport)"},
    tags=("coco", "matterport"),
    description="matterport's Mask R-CNN, ResNet-101 FPN (the tutorial's mask_rcnn_coco.h5), ported to PyTorch.",
    license="MIT",
    mrcnn_class_names=COCO_MRCNN,
)


#: Trained models shipped inside the package (``masklab/assets/``), usable by name from any folder:
#: name -> weights file (its model card ``NAME.json`` lies beside it). ``shapes_demo`` is the offline demo
#: model (the ``small`` architecture trained on ``masklab data shapes``: square, circle, triangle).
BUNDLED: dict[str, str] = {"shapes_demo": "shapes_small.safetensors"}
_ASSETS = Path(__file__).resolve().parent.parent / "assets"


def bundled_model(name: str) -> Path | None:
    """The weights file of the bundled model ``name`` (``shapes_demo``; its file stem ``shapes_small``
    works too), or None when ``name`` is not one."""
    for key, file in BUNDLED.items():
        if name in (key, Path(file).stem):
            return _ASSETS / file
    return None


def model_names() -> list[str]:
    """Every name ``--model`` accepts: the zoo's, then the bundled models'."""
    return [*MODELS, *BUNDLED]


def did_you_mean(name: str, known: list[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest of ``known`` (case-insensitive), or ``""``."""
    import difflib

    lower = {k.lower(): k for k in known}
    close = difflib.get_close_matches(name.lower(), list(lower), n=1, cutoff=0.6)
    return f" (did you mean {lower[close[0]]!r}?)" if close else ""


def get_spec(name: str) -> ModelSpec:
    """The entry called ``name``; a clear error listing the known names otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        known = list(MODELS)  # architectures; a bundled model is a trained file (see find_source)
        raise UsageError(f"unknown model {name!r}{did_you_mean(name, known)}; known models: {', '.join(known)}") from None
