"""What the user named as a model, decided once: :func:`find_source` returns a tagged :class:`ModelSource`.

``model`` (``--model``, ``Segmenter(model)``) may be:

=================== ================================================================================
kind                what it is
=================== ================================================================================
``zoo``             a name from :data:`masklab.models.zoo.MODELS`; weights: ``weights=`` path, the
                    cached/downloaded published file, or ``"random"`` (seeded; tests and benchmarks)
``matterport_h5``   matterport's Keras weights (``mask_rcnn_coco.h5``), recognised by content (HDF5 +
                    its layer names); runs the ``matterport_r101_coco`` port
``exported``        an exported file (``masklab export``: ``.onnx``, OpenVINO ``.xml``, TorchScript
                    ``.pt``, the latter told from a state dict by content); its card has the options
``card``            a trained model with its card: a ``masklab train`` run folder (``model.json``) or
                    ``NAME.safetensors`` next to ``NAME.json`` (a packaged model)
``state_dict``      a bare state dict (``.pth``/``.pt``/``.safetensors``/``.bin``): the architecture and
                    class count are recognised from its keys and shapes
=================== ================================================================================

The decision reads at most a file's first bytes or its zip listing. :func:`masklab.models.loading.load_model`
builds the network for a source, and :func:`masklab.runtime.build_runtime` is the one function that turns
a source plus :class:`~masklab.settings.InferenceSettings` into something that runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from masklab.errors import UsageError, WeightsMismatchError
from masklab.models.card import ModelCard
from masklab.models.exported import detect_export_format, read_card
from masklab.models.matterport.h5 import is_matterport_h5, looks_like_h5
from masklab.models.zoo import MODELS, ModelSpec, bundled_model, did_you_mean, get_spec, model_names

__all__ = [
    "ModelSource",
    "KINDS",
    "STATE_DICT_SUFFIXES",
    "find_source",
    "model_card_for",
    "card_path_of",
    "read_card_file",
    "detect_arch",
    "spec_for_state",
    "spec_from_card",
    "weights_source_for",
]

KINDS = ("zoo", "matterport_h5", "exported", "card", "state_dict")
STATE_DICT_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin")
MATTERPORT_MODEL = "matterport_r101_coco"


@dataclass(frozen=True)
class ModelSource:
    """A model source, tagged with its ``kind`` (one of :data:`KINDS`).

    ``name``: the zoo name (``zoo``, ``matterport_h5``: its zoo entry), else None; ``path``: the file or
    folder the user named (None for a zoo name); ``weights``: for ``zoo``/``matterport_h5``, the weights
    file or ``"random"`` (None: the published weights); ``export_format``: ``exported`` only;
    ``card_path``: ``card`` only (the ``model.json`` / ``NAME.json``)."""

    kind: str
    name: str | None = None
    path: Path | None = None
    weights: str | None = None
    export_format: str | None = None
    card_path: Path | None = None


def _no_weights(path: Path, weights: str | None, what: str) -> None:
    if weights is not None:
        raise UsageError(f"{path} is {what} with its own weights; do not pass --weights")


def find_source(model: str | os.PathLike, weights: str | os.PathLike | None = None) -> ModelSource:
    """Decide what ``model`` is (see the module docstring); errors name what was expected."""
    text = os.fspath(model)
    w = None if weights is None else os.fspath(weights)
    if text in MODELS:
        kind = "matterport_h5" if get_spec(text).arch == "matterport_resnet101" else "zoo"
        return ModelSource(kind, name=text, weights=w)
    path = bundled_model(text) or Path(text)  # shapes_demo: the card-carrying file in masklab/assets/
    fmt = detect_export_format(path) if path.suffix.lower() in (".onnx", ".xml", ".pt", ".pth") else None
    if fmt is not None:
        _no_weights(path, w, f"an exported {fmt} model")
        return ModelSource("exported", path=path, export_format=fmt)
    if path.is_file() and path.suffix.lower() not in STATE_DICT_SUFFIXES:
        if is_matterport_h5(path):
            _no_weights(path, w, "matterport's weights file")
            return ModelSource("matterport_h5", name=MATTERPORT_MODEL, path=path, weights=str(path))
        if looks_like_h5(path):
            raise WeightsMismatchError(
                f"{path} is an HDF5 file but not matterport's Mask R-CNN weights (mask_rcnn_coco.h5 layout: "
                "layers conv1, res2a_branch2a, fpn_c5p5, mrcnn_mask...)"
            )
    card_path = card_path_of(path)
    if card_path is not None:
        _no_weights(path, w, "a trained model")
        return ModelSource("card", path=path, card_path=card_path)
    if path.is_file() and path.suffix in STATE_DICT_SUFFIXES:
        _no_weights(path, w, "a weights file")
        return ModelSource("state_dict", path=path)
    if path.exists():
        raise UsageError(f"cannot use {path} as a model: expected a model name or a {'/'.join(STATE_DICT_SUFFIXES)} file")
    known = model_names()
    raise UsageError(f"unknown model {text!r}{did_you_mean(text, known)}; known models: {', '.join(known)} "
                     "(see `masklab models`), or a weights file path")


def card_path_of(path: Path) -> Path | None:
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


def read_card_file(card_path: Path) -> ModelCard:
    """A trained or packaged model's card (any schema masklab has written)."""
    try:
        doc = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"{card_path}: not a readable masklab model card: {e}") from None
    return ModelCard.from_json(doc, where=str(card_path))


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


def spec_for_state(state: Mapping, *, name: str) -> ModelSpec:
    """The zoo entry a bare state dict fits; with placeholder class names when its class count differs."""
    arch, num_classes = detect_arch(state)
    base = next(s for s in MODELS.values() if s.arch == arch)
    if num_classes == base.num_classes and base.weights is not None:
        return base
    cats = ("__background__",) + tuple(f"class_{i}" for i in range(1, num_classes))
    return dataclasses.replace(
        base, name=name, categories=cats, weights=None, published={}, tags=("custom",), mrcnn_class_names=None
    )


def spec_from_card(card: ModelCard, *, exported: bool = False) -> ModelSpec:
    """The zoo entry of the card's architecture, with the card's classes, sizes and defaults (a card
    leaves a default unset when it is the architecture's)."""
    base = next((s for s in MODELS.values() if s.arch == card.arch), None)
    if base is None and exported:  # an exported file runs without masklab building its network
        base = ModelSpec(name=card.name, arch=card.arch, categories=tuple(card.categories), build=_not_buildable)
    if base is None:
        known = sorted({s.arch for s in MODELS.values()})
        raise UsageError(f"model card {card.name!r}: unknown architecture {card.arch!r}; known: {', '.join(known)}")
    same_classes = tuple(card.categories) == base.categories
    return dataclasses.replace(
        base,
        name=card.name,
        categories=tuple(card.categories),
        weights=None,
        min_size=card.min_size,
        max_size=card.max_size,
        published=dict(card.metrics),
        tags=tuple(card.tags) + ("exported",) if exported else ("custom",),
        description=card.description,
        license=card.license,
        mrcnn_class_names=card.class_names or (base.mrcnn_class_names if same_classes else None),
        **{k: getattr(card, k) for k in ("score_thresh", "nms_thresh", "max_detections", "proposals") if getattr(card, k) is not None},
    )


def _not_buildable(**_kwargs):
    raise UsageError("this model exists only as an exported file; masklab cannot rebuild its network")


def weights_source_for(settings) -> str | None:
    """Where the weights of the model ``settings`` names come from, as the Segmenter records it
    (``loaded.weights_source``), without loading them: a file path, ``"random(seed=0)"``, or the cache
    path of published weights (which may not be downloaded yet)."""
    from masklab.models.weights import weights_path

    src = find_source(settings.model, settings.weights)
    if src.weights == "random":
        return "random(seed=0)"
    if src.kind in ("zoo", "matterport_h5"):
        spec = get_spec(src.name)
        if src.weights is not None:
            return src.weights
        return None if spec.weights is None else str(weights_path(spec.weights))
    if src.kind == "card":
        card = read_card_file(src.card_path)
        return str(src.card_path.parent / card.weights.file) if card.weights and card.weights.file else None
    return str(src.path)


def model_card_for(settings) -> ModelCard:
    """The card of the model ``settings`` (an :class:`~masklab.settings.InferenceSettings`) names, without
    building the network: cheap enough for a driver that only checks flags (a bare state dict is read to
    recognise its architecture; nothing else is loaded). Every default is filled in."""
    src = find_source(settings.model, settings.weights)
    if src.kind in ("zoo", "matterport_h5"):
        return get_spec(src.name).card()
    if src.kind == "exported":
        card = read_card(src.path)
        return spec_from_card(card, exported=True).card().replace(export_format=card.export_format)
    if src.kind == "card":
        return spec_from_card(read_card_file(src.card_path)).card()
    from masklab.models.weights import load_state_dict

    return spec_for_state(load_state_dict(src.path), name=src.path.stem).card()
