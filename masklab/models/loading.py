"""Turn what the user typed (``--model``, ``--weights``) into a ready backend.

``model`` may be:

- a name from :data:`masklab.models.zoo.MODELS` (weights: ``weights=`` path, else the cached/downloaded
  published file, or ``"random"`` for seeded random weights — tests and benchmarks only);
- a path to a state dict (``.pth``/``.pt``/``.safetensors``): the architecture and class count are
  recognised from its keys and shapes;
- a path to matterport's Keras weights (``mask_rcnn_coco.h5``), recognised by content (HDF5 + its
  layer names): runs the ``matterport_r101_coco`` port;
- an exported file (``masklab export``: ``.onnx``, OpenVINO ``.xml``, TorchScript ``.pt``, the latter told
  from a state dict by content): its model card gives the classes and the baked options.

Each case is one branch of :func:`resolve`; no registries.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from masklab.errors import UsageError, WeightsMismatchError
from masklab.models.zoo import MODELS, ModelSpec, get_spec

__all__ = ["LoadedModel", "ModelOptions", "resolve", "build_module", "detect_arch"]

STATE_DICT_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin")


@dataclass(frozen=True)
class ModelOptions:
    """Inference settings that shape the network's post-processing (``None`` = the model's default).

    ``score_thresh`` in [0, 1]; ``nms_thresh`` IoU in [0, 1]; ``max_detections`` per image;
    ``min_size``/``max_size``: resize of the shorter/longer image side in pixels.
    """

    score_thresh: float | None = None  # None: the model entry's own default (ModelSpec.score_thresh)
    nms_thresh: float | None = None
    max_detections: int | None = None
    min_size: int | None = None
    max_size: int | None = None
    rpn_post_nms_top_n: int | None = None

    def __post_init__(self) -> None:
        if self.score_thresh is not None and not 0.0 <= self.score_thresh <= 1.0:
            raise UsageError(f"score_thresh must be in [0, 1], found {self.score_thresh}")
        if self.nms_thresh is not None and not 0.0 <= self.nms_thresh <= 1.0:
            raise UsageError(f"nms_thresh must be in [0, 1], found {self.nms_thresh}")
        for name in ("max_detections", "min_size", "max_size", "rpn_post_nms_top_n"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise UsageError(f"{name} must be a positive integer, found {v}")


@dataclass
class LoadedModel:
    """A model ready to run: its entry, the torch module (None for exported runtimes), and where the
    weights came from (a path, ``"random(seed=0)"``...)."""

    spec: ModelSpec
    module: Any
    weights_source: str
    #: builds the backend (``factory(device=...)``) when ``module`` is not a torchvision Mask R-CNN
    backend_factory: Callable[..., Any] | None = None
    #: "onnx" / "openvino" / "torchscript" for an exported file (``module`` is None; the file is ``weights_source``)
    export_format: str | None = None


def _tv_kwargs(opts: ModelOptions) -> dict:
    kw = {
        "box_score_thresh": opts.score_thresh,
        "box_nms_thresh": opts.nms_thresh,
        "box_detections_per_img": opts.max_detections,
        "min_size": opts.min_size,
        "max_size": opts.max_size,
        "rpn_post_nms_top_n_test": opts.rpn_post_nms_top_n,
    }
    return {k: v for k, v in kw.items() if v is not None}  # drop Nones: defaults live in one place


def build_module(spec: ModelSpec, opts: ModelOptions):
    """Build ``spec``'s network with random weights and ``opts`` applied."""
    kw = _tv_kwargs(opts)
    kw.setdefault("box_score_thresh", spec.score_thresh)
    kw.setdefault("min_size", spec.min_size)
    kw.setdefault("max_size", spec.max_size)
    return spec.build(num_classes=spec.num_classes, **kw)


def detect_arch(state: Mapping) -> tuple[str, int]:
    """Recognise a torchvision Mask R-CNN state dict: returns (arch, num_classes)."""
    key = "roi_heads.box_predictor.cls_score.weight"
    if key not in state:
        raise WeightsMismatchError(
            f"not a Mask R-CNN state dict: key {key!r} is missing (found e.g. {list(state)[:3]})"
        )
    num_classes = int(state[key].shape[0])
    if "backbone.body.conv1.weight" not in state:  # not a ResNet trunk: the MobileNetV3 "small" model
        return "maskrcnn_mobilenet_v3_fpn", num_classes
    if "roi_heads.box_head.fc6.weight" in state:
        return "torchvision_maskrcnn_v1", num_classes
    if "roi_heads.box_head.0.0.weight" in state:
        return "torchvision_maskrcnn_v2", num_classes
    raise WeightsMismatchError("unrecognised Mask R-CNN box head: neither torchvision v1 (fc6) nor v2 (conv) keys")


def _spec_for_state(state: Mapping, *, name: str) -> ModelSpec:
    import dataclasses

    arch, num_classes = detect_arch(state)
    base = next(s for s in MODELS.values() if s.arch == arch)
    if num_classes == base.num_classes and base.weights is not None:
        return base
    cats = ("__background__",) + tuple(f"class_{i}" for i in range(1, num_classes))
    return dataclasses.replace(
        base, name=name, categories=cats, weights=None, published={}, tags=("custom",), mrcnn_class_names=None
    )


def _load_weights_into(module, state: Mapping, source: str) -> None:
    from masklab.models.weights import check_state_dict

    try:
        check_state_dict(module, state, source=f"weights {source}")
    except WeightsMismatchError as e:
        try:
            arch, n = detect_arch(state)
        except WeightsMismatchError:
            raise e from None
        name = next((s.name for s in MODELS.values() if s.arch == arch), arch)
        raise WeightsMismatchError(f"{e}\n  the file holds {name} weights ({n} classes): use --model {name}") from None
    module.load_state_dict(state, strict=True)


def resolve(model: str | os.PathLike, *, weights: str | os.PathLike | None, opts: ModelOptions, seed: int = 0) -> LoadedModel:
    """Build the network for ``model`` and load its weights (see the module docstring for the cases)."""
    import torch

    from masklab.models.weights import ensure_weights, load_state_dict

    model_str = os.fspath(model)
    path = Path(model_str)
    if model_str in MODELS and get_spec(model_str).arch == "matterport_resnet101":
        from masklab.models.matterport.entry import resolve_matterport

        return resolve_matterport(get_spec(model_str), weights=weights, opts=opts, seed=seed)
    if model_str in MODELS:
        spec = get_spec(model_str)
        if weights is not None and os.fspath(weights) == "random":
            torch.manual_seed(seed)
            return LoadedModel(spec, build_module(spec, opts), f"random(seed={seed})")
        if weights is not None:
            wpath = Path(os.fspath(weights))
        elif spec.weights is not None:
            wpath = ensure_weights(spec.weights)
        else:
            raise UsageError(f"model {spec.name!r} has no published weights: pass --weights PATH")
        state = load_state_dict(wpath)
        module = build_module(spec, opts)
        _load_weights_into(module, state, str(wpath))
        return LoadedModel(spec, module, str(wpath))
    if path.is_file() and path.suffix.lower() in (".onnx", ".xml", ".pt", ".pth"):
        from masklab.export import detect_export_format

        fmt = detect_export_format(path)  # by content: a .pt may be TorchScript or a plain state dict
        if fmt is not None:
            return _resolve_exported(path, fmt, weights=weights, opts=opts)
    if path.is_file() and path.suffix.lower() not in STATE_DICT_SUFFIXES:
        from masklab.models.matterport.entry import is_matterport_h5, looks_like_h5, resolve_matterport

        if is_matterport_h5(path):
            if weights is not None:
                raise UsageError("give either a weights file as the model or --weights, not both")
            return resolve_matterport(get_spec("matterport_r101_coco"), weights=path, opts=opts, seed=seed)
        if looks_like_h5(path):
            raise WeightsMismatchError(
                f"{path} is an HDF5 file but not matterport's Mask R-CNN weights (mask_rcnn_coco.h5 layout: "
                "layers conv1, res2a_branch2a, fpn_c5p5, mrcnn_mask...)"
            )
    card_path = _card_path(path)
    if card_path is not None:
        if weights is not None:
            raise UsageError(f"{path} is a trained model with its own weights; do not pass --weights")
        return _resolve_card(card_path, opts)
    if path.is_file() and path.suffix in STATE_DICT_SUFFIXES:
        if weights is not None:
            raise UsageError("give either a weights file as the model or --weights, not both")
        state = load_state_dict(path)
        spec = _spec_for_state(state, name=path.stem)
        module = build_module(spec, opts)
        _load_weights_into(module, state, str(path))
        return LoadedModel(spec, module, str(path))
    if path.exists():
        raise UsageError(f"cannot use {path} as a model: expected a model name or a {'/'.join(STATE_DICT_SUFFIXES)} file")
    raise UsageError(f"unknown model {model_str!r}; known models: {', '.join(MODELS)} (or a weights file path)")


def _resolve_exported(path: Path, fmt: str, *, weights, opts: ModelOptions) -> LoadedModel:
    """An exported file (``masklab export``): the spec comes from the model card inside it."""
    from masklab.export import read_card

    if weights is not None:
        raise UsageError(f"{path} is an exported {fmt} model with its weights inside; do not pass --weights")
    card = read_card(path)
    baked = card["options"]
    for name in ("nms_thresh", "max_detections", "min_size", "max_size", "rpn_post_nms_top_n"):
        v = getattr(opts, name)
        if v is not None and v != baked[name]:
            raise UsageError(f"{path} was exported with {name}={baked[name]}; {name}={v} needs a new export")
    if opts.score_thresh is not None and opts.score_thresh < baked["score_thresh"]:
        raise UsageError(
            f"{path} was exported with score_thresh={baked['score_thresh']}: it cannot return lower scores "
            f"(asked for {opts.score_thresh}); export again with a lower threshold"
        )
    base = next((s for s in MODELS.values() if s.arch == card["arch"]), None)
    spec = ModelSpec(
        name=card["name"],
        arch=card["arch"],
        categories=tuple(card["categories"]),
        build=base.build if base is not None else build_module,
        min_size=baked["min_size"],
        max_size=baked["max_size"],
        published=dict(card.get("published", {})),
        tags=tuple(card.get("tags", ())) + ("exported",),
        description=card.get("description", ""),
        license=card.get("license", ""),
        mrcnn_class_names=base.mrcnn_class_names if base is not None and base.categories == tuple(card["categories"]) else None,
    )
    return LoadedModel(spec, None, str(path), export_format=fmt)



def _card_path(path: Path) -> Path | None:
    """The model card of a trained model: ``RUN_DIR/model.json`` (a ``masklab train`` run directory) or
    ``NAME.json`` next to ``NAME.safetensors`` (a packaged model). None when ``path`` is neither."""
    if path.is_dir():
        if (path / "model.json").is_file():
            return path / "model.json"
        if (path / "settings.json").is_file():
            raise UsageError(f"{path} is a training run without a model yet (no model.json: no epoch has finished)")
        return None
    if path.is_file() and path.suffix == ".safetensors" and path.with_suffix(".json").is_file():
        return path.with_suffix(".json")
    return None


def _resolve_card(card_path: Path, opts: ModelOptions) -> LoadedModel:
    """Build the model a card describes (classes, preprocessing, architecture) and load its weights:
    the weights describe themselves, nothing is guessed from tensor shapes."""
    import dataclasses
    import json

    from masklab.models.weights import load_state_dict

    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
        arch, categories, wname = card["arch"], tuple(card["categories"]), card["weights"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UsageError(f"{card_path}: not a masklab model card (needs arch, categories, weights): {e}") from None
    base = next((s for s in MODELS.values() if s.arch == arch), None)
    if base is None:
        raise UsageError(f"{card_path}: unknown architecture {arch!r}")
    spec = dataclasses.replace(
        base,
        name=str(card.get("name") or card_path.parent.name),
        categories=categories,
        weights=None,
        min_size=int(card.get("min_size", base.min_size)),
        max_size=int(card.get("max_size", base.max_size)),
        published=dict(card.get("score") or {}),
        tags=("custom",),
        description=str(card.get("description", "")),
        license=str(card.get("license", "")),
        mrcnn_class_names=None,
    )
    wpath = card_path.parent / wname
    state = load_state_dict(wpath)  # fp16-stored tensors are copied into the fp32 module by load_state_dict
    module = build_module(spec, opts)
    _load_weights_into(module, state, str(wpath))
    return LoadedModel(spec, module, str(wpath))
