"""`InferenceSettings`: every option that decides how a model runs, in one frozen dataclass.

This is the single place where inference options are declared and defaulted. The same object travels
from the CLI (:func:`masklab.cli.options.add_model_arguments` + :meth:`InferenceSettings.from_args`) or
the API (``Segmenter(settings=...)`` or its keywords) to the runtime, the Ray actors, the web service and
the benchmarks, and back out as ``run.json``'s settings block (:meth:`InferenceSettings.to_json`).

``None`` means "the model's default": the model card supplies it (``score_thresh`` 0.5 for torchvision
models, 0.7 for ``matterport_r101_coco`` as the tutorial's ``DETECTION_MIN_CONFIDENCE``; ``nms_thresh``,
``max_detections``, ``proposals``, ``min_size``/``max_size`` likewise). :meth:`InferenceSettings.with_model_defaults`
fills them in once the model is known. Validation here is cheap and loads nothing.

One name per concept, everywhere (API keyword, CLI flag, JSON key):

============== =================== ============================================= ===================
field          CLI flag            meaning                                       torchvision / matterport
============== =================== ============================================= ===================
score_thresh   --score-thresh      keep detections with score >= this, [0, 1]    box_score_thresh / DETECTION_MIN_CONFIDENCE
nms_thresh     --nms-thresh        per-class NMS IoU, [0, 1]                     box_nms_thresh / DETECTION_NMS_THRESHOLD
max_detections --max-detections    most objects per image                        box_detections_per_img / DETECTION_MAX_INSTANCES
proposals      --proposals         RPN proposals kept before the box head        rpn_post_nms_top_n_test / POST_NMS_ROIS_INFERENCE
min_size       --min-size          resize the shorter image side to this (px)    min_size / IMAGE_MIN_DIM
max_size       --max-size          cap the longer image side at this (px)        max_size / IMAGE_MAX_DIM
============== =================== ============================================= ===================

Tiled inference (large images, small objects; :mod:`masklab.inference.tiling`): ``tile`` (``--tile``:
None = off; an int SIZE or ``(w, h)`` in original-image pixels, or ``"auto"``), ``tile_overlap``
(``--tile-overlap``, fraction of the tile in [0, 0.9], default 0.2), ``tile_full_pass``
(``--tile-full-pass``: also one whole-image pass, merged with the tiles, for objects larger than a tile).

Mask quality (:mod:`masklab.structures.quality`): ``min_quality`` (``--min-quality``: keep instances whose
mask quality is at least this, [0, 1]; None keeps all) and ``refine`` (``--refine``: ``"none"``,
``"guided"`` edge-aware refinement on the image, ``"sam"`` segment-anything prompted with each box, which
needs ``sam_checkpoint``, ``--sam-checkpoint``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from masklab.errors import UsageError

__all__ = [
    "InferenceSettings",
    "DEFAULT_MODEL",
    "BACKENDS",
    "PRECISIONS",
    "MODEL_OPTIONS",
    "LOW_SCORE_THRESH",
    "RUNTIME_ONLY",
    "REFINE_METHODS",
]

#: The model users get when they name none.
DEFAULT_MODEL = "maskrcnn_resnet50_fpn_v2"
#: ``backend`` choices. auto: an exported file's own runtime; torch-fast on CUDA or reduced precision;
#: eager torch on the CPU (see :mod:`masklab.runtime`).
BACKENDS = ("auto", "torch", "torch-fast", "openvino", "onnx", "torchscript")
#: ``precision`` choices; fp32 is exact, the others are used only when asked for (int8: a model calibrated
#: once with ``masklab quantize``, see :mod:`masklab.export.quantize`).
PRECISIONS = ("fp32", "bf16", "fp16", "int8")
#: The options whose default comes from the model card (``None`` = that default).
MODEL_OPTIONS = ("score_thresh", "nms_thresh", "max_detections", "proposals", "min_size", "max_size")
#: The floor that COCO evaluation and the web service keep, so that metrics see the whole
#: precision-recall curve and a request can choose its own threshold above it.
LOW_SCORE_THRESH = 0.05
#: ``refine`` choices (:mod:`masklab.inference.refine`): none, guided filter on the image, segment-anything
REFINE_METHODS = ("none", "guided", "sam")
#: Settings that change how fast a run goes, not what it writes: left out of a run's resume fingerprint.
RUNTIME_ONLY = ("device", "threads", "strict_precision")


@dataclass(frozen=True, kw_only=True)
class InferenceSettings:
    """How to run a model (frozen; build a changed copy with :meth:`replace`).

    Attributes:
        model: a zoo name (``masklab models``), a weights / exported / ``.h5`` file, or a training run folder.
        weights: a local weights file for a zoo name, ``"random"`` for seeded random weights (tests and
            benchmarks), or None for the model's published weights.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        backend: one of :data:`BACKENDS`; recorded exactly as given.
        precision: one of :data:`PRECISIONS`.
        score_thresh, nms_thresh: float in [0, 1], or None for the model's default.
        max_detections, proposals, min_size, max_size: positive int, or None for the model's default.
        classes: class names to keep (e.g. ``("person", "car")``), or None for all.
        threads: CPU threads for the runtime; None leaves torch's setting as the entry point made it.
        tile: None (no tiling: the whole image in one pass), an int SIZE (square tiles of SIZE x SIZE
            original-image pixels), ``(w, h)``, or ``"auto"`` (from the model's input size and the image;
            no tiling when the image is not larger than the model input). The CLI's ``SIZE``/``WxH``
            strings are parsed here.
        tile_overlap: float in [0, 0.9]: how much neighbouring tiles overlap, as a fraction of the tile.
        tile_full_pass: also run the whole image once and merge it with the tiles (objects larger than a tile).
        strict_precision: refuse a reduced ``precision`` this CPU only emulates (default: warn once and
            run fp32, which is faster there; see :mod:`masklab.hardware`).
        min_quality: keep instances whose mask quality (``Instances.quality``) is >= this, in [0, 1]; None: all.
        refine: one of :data:`REFINE_METHODS` (untiled runs): ``"guided"`` snaps mask outlines to image
            edges inside each box; ``"sam"`` asks segment-anything (``sam_checkpoint``) for each box's mask.
        sam_checkpoint: a segment-anything checkpoint file (``sam_vit_b_01ec64.pth`` ...) for ``refine="sam"``.
    """

    model: str = DEFAULT_MODEL
    weights: str | None = None
    device: str = "auto"
    backend: str = "auto"
    precision: str = "fp32"
    score_thresh: float | None = None
    nms_thresh: float | None = None
    max_detections: int | None = None
    proposals: int | None = None
    min_size: int | None = None
    max_size: int | None = None
    classes: tuple[str, ...] | None = None
    threads: int | None = None
    tile: int | tuple[int, int] | str | None = None
    tile_overlap: float = 0.2
    tile_full_pass: bool = False
    strict_precision: bool = False
    min_quality: float | None = None
    refine: str = "none"
    sam_checkpoint: str | None = None

    def __post_init__(self) -> None:
        # normalise what callers naturally pass (paths, lists) so equal settings compare and hash equal
        object.__setattr__(self, "model", os.fspath(self.model))
        if self.weights is not None:
            object.__setattr__(self, "weights", os.fspath(self.weights))
        if self.classes is not None:
            if isinstance(self.classes, str):
                raise UsageError(f"classes must be a list of names, found the string {self.classes!r}")
            object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        object.__setattr__(self, "tile", _parse_tile(self.tile))
        self._validate()

    def _validate(self) -> None:
        if self.backend not in BACKENDS:
            raise UsageError(f"backend must be one of {', '.join(BACKENDS)}, found {self.backend!r}{_hint(self.backend, BACKENDS)}")
        if self.precision not in PRECISIONS:
            raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, found {self.precision!r}{_hint(self.precision, PRECISIONS)}")
        d = self.device
        if d not in ("auto", "cpu", "cuda") and not (d.startswith("cuda:") and d[5:].isdigit()):
            raise UsageError(f"device must be auto, cpu or cuda[:N], found {d!r}")
        for name in ("score_thresh", "nms_thresh"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v <= 1.0:
                raise UsageError(f"{name} must be in [0, 1], found {v}")
        for name in ("max_detections", "proposals", "min_size", "max_size", "threads"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or int(v) != v or v < 1):
                raise UsageError(f"{name} must be a positive integer, found {v}")
        if isinstance(self.tile_overlap, bool) or not 0.0 <= float(self.tile_overlap) <= 0.9:
            raise UsageError(f"tile_overlap must be a fraction in [0, 0.9], found {self.tile_overlap!r}")
        if not isinstance(self.tile_full_pass, bool):
            raise UsageError(f"tile_full_pass must be true or false, found {self.tile_full_pass!r}")
        if self.min_quality is not None and (isinstance(self.min_quality, bool) or not 0.0 <= self.min_quality <= 1.0):
            raise UsageError(f"min_quality must be in [0, 1], found {self.min_quality!r}")
        if self.refine not in REFINE_METHODS:
            raise UsageError(f"refine must be one of {', '.join(REFINE_METHODS)}, found {self.refine!r}{_hint(self.refine, REFINE_METHODS)}")
        if self.refine == "sam" and not self.sam_checkpoint:
            raise UsageError("refine 'sam' needs a segment-anything checkpoint: pass --sam-checkpoint PATH (sam_vit_b_01ec64.pth ...)")
        if self.min_size is not None and self.max_size is not None and self.min_size > self.max_size:
            raise UsageError(f"min_size ({self.min_size}) must not exceed max_size ({self.max_size})")

    # -- building -------------------------------------------------------------------------------------
    @classmethod
    def from_args(cls, args: Any, **overrides: Any) -> InferenceSettings:
        """From an ``argparse`` namespace made by :func:`masklab.cli.options.add_model_arguments`
        (flags a command does not declare keep their defaults); ``overrides`` win."""
        values = {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}
        if isinstance(values.get("classes"), str):
            values["classes"] = tuple(c.strip() for c in values["classes"].split(",") if c.strip()) or None
        values.update(overrides)
        return cls(**values)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> InferenceSettings:
        """Inverse of :meth:`to_json` (unknown keys, such as a run's output options, are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in names and v is not None})

    def replace(self, **changes: Any) -> InferenceSettings:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def with_model_defaults(self, defaults: Mapping[str, Any]) -> InferenceSettings:
        """Fill every ``None`` of :data:`MODEL_OPTIONS` from ``defaults`` (a model card's values)."""
        return self.replace(**{k: defaults[k] for k in MODEL_OPTIONS if getattr(self, k) is None and k in defaults})

    # -- out ------------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """Every field as JSON-ready values (``run.json``'s settings block, the Ray actors' start-up
        argument); :meth:`from_json` reads it back."""
        doc = dataclasses.asdict(self)
        doc["classes"] = list(self.classes) if self.classes is not None else None
        doc["tile"] = list(self.tile) if isinstance(self.tile, tuple) else self.tile
        return doc

    def to_run_json(self, card: Any, *, weights_source: str | None = None) -> dict[str, Any]:
        """``run.json``'s settings block: :meth:`to_json` with every model default filled in from
        ``card`` (a :class:`~masklab.models.card.ModelCard`), so the record says what was used; ``model``
        and ``arch`` are the card's, ``weights`` where the weights came from (``weights_source``)."""
        doc = self.with_model_defaults(card.defaults()).to_json()
        doc.update(model=card.name, arch=card.arch, weights=weights_source if weights_source is not None else self.weights)
        return doc

    def model_options(self) -> dict[str, Any]:
        """The :data:`MODEL_OPTIONS` that are set (None dropped: the model's own default stays in force)."""
        return {k: getattr(self, k) for k in MODEL_OPTIONS if getattr(self, k) is not None}


def _parse_tile(value: Any) -> tuple[int, int] | str | None:
    """``tile`` as None, ``"auto"`` or ``(w, h)`` positive ints; accepts an int, ``"SIZE"``, ``"WxH"``,
    ``"auto"`` or a pair (JSON gives a list)."""
    if value is None or value == "auto":
        return value
    raw = value
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return "auto"
        parts = text.split("x")
        if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
            raise UsageError(f"tile must be SIZE, WxH (pixels) or auto, found {raw!r}")
        value = [int(p) for p in parts]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    elif not isinstance(value, (list, tuple)) or len(value) not in (1, 2):
        raise UsageError(f"tile must be SIZE, (w, h) or 'auto', found {raw!r}")
    if len(value) == 1:
        value = [value[0], value[0]]
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or v < 16 for v in value):
        raise UsageError(f"tile sizes must be integers of at least 16 pixels, found {raw!r}")
    return (int(value[0]), int(value[1]))


def _hint(value: str, valid: Sequence[str]) -> str:
    import difflib

    close = difflib.get_close_matches(str(value), valid, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
