"""Build the network for a :class:`~masklab.models.source.ModelSource` and load its weights.

:func:`load_model` takes the tagged source :func:`~masklab.models.source.find_source` decided on and the
:class:`~masklab.settings.InferenceSettings` whose post-processing options are built into the network
(``None`` = the model card's default; every default is passed explicitly, so the module's configuration
is exactly the card's). An exported file has no torch module: its runtime reads the file itself.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from masklab.errors import UsageError, WeightsMismatchError
from masklab.models.card import ModelCard
from masklab.models.exported import read_card
from masklab.models.mask_iou import attach_mask_iou_head, config_from_state, head_config
from masklab.models.source import (
    ModelSource,
    detect_arch,
    find_source,
    read_card_file,
    spec_for_state,
    spec_from_card,
)
from masklab.models.weights import check_state_dict, ensure_weights, load_state_dict, weights_path
from masklab.models.zoo import MODELS, ModelSpec, get_spec
from masklab.settings import MODEL_OPTIONS, InferenceSettings

__all__ = ["LoadedModel", "load_model", "build_module", "module_kwargs"]

@dataclass
class LoadedModel:
    """A model ready for a runtime.

    ``spec``: its zoo entry (classes, sizes, defaults; derived from the card for trained and exported
    models); ``card``: its :class:`~masklab.models.card.ModelCard`, every default filled in; ``module``:
    the torch network (None for an exported file, which is ``weights_source``, and for a prepared one);
    ``weights_source``: where the weights came from (a path, ``"random(seed=0)"``...); ``source``: what
    the user named; ``prepared``: the OpenVINO IR (``.xml``) converted from these weights and settings,
    when the cache has it (:mod:`masklab.runtime.prepared`); ``settings``: what it was loaded with."""

    spec: ModelSpec
    card: ModelCard
    module: Any
    weights_source: str
    source: ModelSource
    prepared: Path | None = None
    settings: InferenceSettings | None = None

    @property
    def export_format(self) -> str | None:
        """``"onnx"`` / ``"openvino"`` / ``"torchscript"`` for an exported file, else None."""
        return self.source.export_format


def module_kwargs(spec: ModelSpec, settings: InferenceSettings | None = None) -> dict[str, Any]:
    """``spec.build``'s keywords: every :data:`~masklab.settings.MODEL_OPTIONS` field, ``settings``' value
    or else the card's default (each builder maps them onto its network's own names)."""
    s = (settings or InferenceSettings(model=spec.name)).with_model_defaults(spec.card().defaults())
    return {k: getattr(s, k) for k in MODEL_OPTIONS}


def build_module(spec: ModelSpec, settings: InferenceSettings | None = None):
    """Build ``spec``'s network with random weights and ``settings``' post-processing options applied."""
    return spec.build(num_classes=spec.num_classes, **module_kwargs(spec, settings))


def _load_weights_into(module, state: Mapping, source: str, *, spec: ModelSpec, given_as_weights: bool) -> None:
    try:
        check_state_dict(module, state, source=f"weights {source}")
    except WeightsMismatchError as e:
        try:
            arch, n = detect_arch(state)
        except WeightsMismatchError:
            raise e from None
        if not given_as_weights:
            raise e from None
        # The fix that works: the file as the model (its architecture and class count are read from its
        # keys, its card from NAME.json beside it). "--model <arch name>" would fail again whenever the
        # class count differs from that entry's.
        name = next((s.name for s in MODELS.values() if s.arch == arch), arch)
        what = "the same architecture" if arch == spec.arch else f"{name} weights"
        raise WeightsMismatchError(
            f"{e}\n  the file holds {what} with {n} classes (background included); pass the file itself as the "
            f"model: --model {shlex.quote(source)} (no --weights)"
        ) from None
    module.load_state_dict(state, strict=True)


def _with_state(spec: ModelSpec, path: Path, settings: InferenceSettings, state: Mapping | None = None, *,
                given_as_weights: bool = False, mask_iou: Mapping | None = None) -> tuple:
    """Build ``spec``'s network and load ``path``'s weights; with a MaskIoU head when ``mask_iou`` (a card's
    ``mask_iou_head``) says so or the weights hold one."""
    state = load_state_dict(path) if state is None else state  # fp16-stored tensors are copied into fp32
    module = build_module(spec, settings)
    mask_iou = mask_iou or config_from_state(state)
    if mask_iou:
        attach_mask_iou_head(module, mask_iou)
    _load_weights_into(module, state, str(path), spec=spec, given_as_weights=given_as_weights)
    return spec, module, str(path)


def _random(spec: ModelSpec, settings: InferenceSettings, seed: int) -> tuple:
    import torch

    torch.manual_seed(seed)
    return spec, build_module(spec, settings), f"random(seed={seed})"


def _load_zoo(src: ModelSource, settings: InferenceSettings, seed: int) -> tuple:
    spec = get_spec(src.name)
    if src.weights == "random":
        return _random(spec, settings, seed)
    if src.weights is not None:
        return _with_state(spec, Path(src.weights), settings, given_as_weights=True)
    if spec.weights is None:
        raise UsageError(f"model {spec.name!r} has no published weights: pass --weights PATH")
    return _with_state(spec, ensure_weights(spec.weights), settings)


def _load_matterport(src: ModelSource, settings: InferenceSettings, seed: int) -> tuple:
    from masklab.models.matterport.entry import default_weights, load_h5_module  # torch: only when built

    spec = get_spec(src.name)
    if src.weights == "random":
        return _random(spec, settings, seed)
    path = Path(src.weights) if src.weights is not None else default_weights(spec)
    return spec, load_h5_module(lambda: build_module(spec, settings), path), str(path)


def _load_card(src: ModelSource, settings: InferenceSettings, seed: int) -> tuple:
    card = read_card_file(src.card_path)
    if card.weights is None or not card.weights.file:
        raise UsageError(f"{src.card_path}: the model card names no weights file")
    spec, module, weights = _with_state(spec_from_card(card), src.card_path.parent / card.weights.file, settings,
                                        mask_iou=card.mask_iou_head)
    return spec, module, weights, card


def _load_state_dict(src: ModelSource, settings: InferenceSettings, seed: int) -> tuple:
    state = load_state_dict(src.path)
    return _with_state(spec_for_state(state, name=src.path.stem), src.path, settings, state)


def _load_exported(src: ModelSource, settings: InferenceSettings, seed: int) -> tuple:
    card = read_card(src.path)
    for name in ("nms_thresh", "max_detections", "min_size", "max_size", "proposals"):
        v, baked = getattr(settings, name), getattr(card, name)
        if v is not None and v != baked:
            raise UsageError(f"{src.path} was exported with {name}={baked}; {name}={v} needs a new export")
    if settings.score_thresh is not None and card.score_thresh is not None and settings.score_thresh < card.score_thresh:
        raise UsageError(
            f"{src.path} was exported with score_thresh={card.score_thresh}: it cannot return lower scores "
            f"(asked for {settings.score_thresh}); export again with a lower threshold"
        )
    return spec_from_card(card, exported=True), None, str(src.path), card


_LOADERS = {
    "zoo": _load_zoo,
    "matterport_h5": _load_matterport,
    "card": _load_card,
    "state_dict": _load_state_dict,
    "exported": _load_exported,
}


def _without_network(src: ModelSource, prepared: Path, seed: int) -> tuple:
    """``(spec, None, weights_source[, card])`` for a source whose prepared model will run: every fact
    the network would give, read from names and cards only (no torch, no tensors)."""
    if src.kind in ("zoo", "matterport_h5"):
        spec = get_spec(src.name)
        if src.weights == "random":
            return spec, None, f"random(seed={seed})"
        return spec, None, src.weights if src.weights is not None else str(weights_path(spec.weights))
    if src.kind == "card":
        card = read_card_file(src.card_path)
        return spec_from_card(card), None, str(src.card_path.parent / card.weights.file), card
    card = read_card(prepared)  # a bare state dict: the prepared file's card knows its architecture
    return spec_from_card(card.replace(name=src.path.stem)), None, str(src.path)


def load_model(
    settings: InferenceSettings, *, source: ModelSource | None = None, seed: int = 0, prepared: Path | None = None
) -> LoadedModel:
    """Build and load the model ``settings.model`` / ``settings.weights`` name (``source``: already
    decided by :func:`~masklab.models.source.find_source`). ``seed`` seeds ``weights="random"``.
    ``prepared``: its prepared OpenVINO file; then the torch network is not built (``module`` is None)."""
    src = source if source is not None else find_source(settings.model, settings.weights)
    if prepared is not None and src.kind != "exported":
        spec, module, weights_source, *file_card = _without_network(src, prepared, seed)
    else:
        spec, module, weights_source, *file_card = _LOADERS[src.kind](src, settings, seed)
    card = spec.card()
    if src.kind == "exported":  # an int8 IR's card says so (precision, calibration record)
        card = card.replace(export_format=src.export_format, precision=file_card[0].precision,
                            quantization=file_card[0].quantization)
        file_card = []
    if file_card:  # a trained model: its card's record of the training data and provenance stays with it
        c = file_card[0]
        card = card.replace(data_stats=c.data_stats, trained=c.trained, base_model=c.base_model, metrics=dict(c.metrics),
                            mask_iou_head=c.mask_iou_head)
    if module is not None and head_config(module) is not None:
        card = card.replace(mask_iou_head=head_config(module))
    return LoadedModel(spec=spec, card=card, module=module, weights_source=weights_source, source=src,
                       prepared=prepared, settings=settings)
