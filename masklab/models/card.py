"""`ModelCard`: the one description of a model, for zoo entries, training runs, packaged
``.safetensors`` and exported files alike (after timm's ``PretrainedCfg``).

A card says which classes the outputs index, how images are pre-processed, the post-processing defaults
(:data:`masklab.settings.MODEL_OPTIONS`: these are "the model's default" wherever a setting is None),
where the weights are, what accuracy they reach and how they were made. :meth:`ModelCard.to_json`
writes schema ``masklab-model-card/2``; :meth:`ModelCard.from_json` reads that and every card masklab
wrote before it:

- ``masklab-model-card/1`` (training runs' ``model.json`` and packaged models, such as the shipped demo
  model): ``weights`` a file name, ``score`` the measured AP, ``preprocessing`` a sentence;
- exported files' cards (``masklab_card_version: 1``): the zoo card + ``options`` (baked in) +
  ``preprocessing`` a dict + ``outputs``;
- zoo cards in older ``run.json`` files (no version): ``weights`` a dict (url, sha256, filename).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from masklab.errors import UsageError
from masklab.io.formats.common import NOT_CLASSES

__all__ = ["ModelCard", "WeightsRef", "CARD_SCHEMA", "IMAGENET_MEAN", "IMAGENET_STD"]

CARD_SCHEMA = "masklab-model-card/2"
_LEGACY_TRAINED = "masklab-model-card/1"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True, kw_only=True)
class WeightsRef:
    """Where a model's weights are.

    ``file``: a path relative to the card's folder (training runs, packaged models) or the cache file
    name (zoo); ``url`` and ``sha256`` for published weights (a prefix of at least 8 hex digits is checked
    as a prefix); ``storage``: ``"float32"`` or ``"float16"`` (loading restores float32)."""

    file: str | None = None
    url: str | None = None
    sha256: str | None = None
    size_bytes: int | None = None
    storage: str = "float32"


@dataclass(frozen=True, kw_only=True)
class ModelCard:
    """One model's description (see the module docstring).

    Attributes:
        name, arch: what users call it; the architecture family that builds and recognises it.
        categories: index = class id; the background at 0 (``"__background__"``, matterport's ``"BG"``);
            ``"N/A"`` marks unused ids.
        min_size, max_size: input resize in pixels (shorter side to ``min_size``, longer at most ``max_size``).
        image_mean, image_std: RGB normalisation applied inside the model to uint8/255 input in [0, 1].
        score_thresh, nms_thresh, max_detections, proposals: post-processing defaults; None = the
            architecture's (its zoo entry's). For an exported file they are baked in (``export_format`` is set).
        mask_threshold: probability at which 28x28 mask predictions become pixels.
        weights: where the weights are, or None (random or inside an exported file).
        metrics: accuracy, e.g. ``{"box_ap": 47.4, "mask_ap": 41.8, "dataset": "COCO val2017"}`` (zoo: percent;
            training runs: fractions, as pycocotools reports them).
        class_names: the tutorial-style ``class_names`` (``"BG"`` first) that ``detect()`` indexes, when
            they differ from the categories.
        base_model, trained, reproduce, notes: provenance (``trained``: data, init, epochs, steps, command).
        data_stats: the training set's image and object sizes in original pixels
            (:func:`masklab.data.stats.dataset_stats`); ``--tile auto`` uses them.
        mask_iou_head: the sizes of the model's MaskIoU head (:func:`masklab.models.mask_iou.head_config`)
            when it was trained with one (``masklab train --mask-iou-head``): loading builds the head, and
            its predicted mask IoU is every detection's ``quality``; None: no head.
        export_format, source_weights, outputs: for exported files (format, what was exported, output specs).
        precision, quantization: for exported files whose weights are not fp32: ``"int8"`` for an
            NNCF-quantised OpenVINO IR, and how it was calibrated (:mod:`masklab.export.quantize`); None = fp32.
        extra: keys this version does not know, kept so that a card read and written again loses nothing.
    """

    name: str
    arch: str
    categories: tuple[str, ...]
    min_size: int
    max_size: int
    image_mean: tuple[float, ...] = IMAGENET_MEAN
    image_std: tuple[float, ...] = IMAGENET_STD
    # None: the architecture's default (its zoo entry, :class:`~masklab.models.zoo.ModelSpec`)
    score_thresh: float | None = None
    nms_thresh: float | None = None
    max_detections: int | None = None
    proposals: int | None = None
    mask_threshold: float = 0.5
    weights: WeightsRef | None = None
    metrics: dict = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    description: str = ""
    license: str = ""
    class_names: tuple[str, ...] | None = None
    base_model: str | None = None
    trained: dict | None = None
    data_stats: dict | None = None
    mask_iou_head: dict | None = None
    reproduce: tuple[str, ...] = ()
    notes: str = ""
    export_format: str | None = None
    source_weights: str | None = None
    outputs: dict | None = None
    precision: str | None = None
    quantization: dict | None = None
    masklab_version: str | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.categories) < 2:
            raise UsageError(f"model card {self.name!r}: categories must list the background and at least one class, found {list(self.categories)}")

    @property
    def num_classes(self) -> int:
        """Outputs of the classifier, background included (always ``len(categories)``)."""
        return len(self.categories)

    def defaults(self) -> dict[str, Any]:
        """The model's defaults for :data:`masklab.settings.MODEL_OPTIONS` (those the card sets)."""
        values = {
            "score_thresh": self.score_thresh,
            "nms_thresh": self.nms_thresh,
            "max_detections": self.max_detections,
            "proposals": self.proposals,
            "min_size": self.min_size,
            "max_size": self.max_size,
        }
        return {k: v for k, v in values.items() if v is not None}

    def check_classes(self, classes: Sequence[str] | None) -> None:
        """Raise a clear error when ``classes`` (names to keep) holds a name this model does not predict."""
        if classes is None:
            return
        import difflib

        known = [c for c in dict.fromkeys(self.categories) if c not in NOT_CLASSES]  # model order
        unknown = [c for c in classes if c not in known]
        if unknown:
            lower = {k.lower(): k for k in known}
            close = [difflib.get_close_matches(c.lower(), list(lower), n=1, cutoff=0.6) for c in unknown]
            hints = [f"{lower[m[0]]!r} for {c!r}" for c, m in zip(unknown, close) if m]
            hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
            raise UsageError(f"unknown class names {unknown} for model {self.name!r}{hint}; its {len(known)} classes: "
                             f"{', '.join(known[:40])}{' ...' if len(known) > 40 else ''}")

    def replace(self, **changes: Any) -> ModelCard:
        return dataclasses.replace(self, **changes)

    # -- JSON -----------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict, schema :data:`CARD_SCHEMA` (``num_classes`` is written for readers, never read)."""
        doc: dict[str, Any] = {"format": CARD_SCHEMA}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            v = getattr(self, f.name)
            if isinstance(v, tuple):
                v = list(v)
            elif isinstance(v, WeightsRef):
                v = {k: w for k, w in dataclasses.asdict(v).items() if w is not None}
            doc[f.name] = v
        doc["num_classes"] = self.num_classes
        return {**self.extra, **doc}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], *, where: str = "model card") -> ModelCard:
        """Read a card of any schema masklab has written (see the module docstring)."""
        if not isinstance(doc, Mapping):
            raise UsageError(f"{where}: expected a JSON object, found {type(doc).__name__}")
        try:
            if doc.get("format") == CARD_SCHEMA:
                return cls._from_v2(doc)
            if doc.get("format") == _LEGACY_TRAINED:
                return cls._from_trained_v1(doc)
            if "masklab_card_version" in doc:
                if doc["masklab_card_version"] != 1:
                    raise UsageError(f"{where}: model card version {doc['masklab_card_version']!r}, this masklab reads 1 and {CARD_SCHEMA}")
                return cls._from_export_v1(doc)
            if "format" in doc and str(doc["format"]).startswith("masklab-model-card/"):
                raise UsageError(f"{where}: card format {doc['format']!r} is newer than this masklab ({CARD_SCHEMA}); upgrade masklab")
            return cls._from_zoo_v0(doc)
        except (KeyError, TypeError, ValueError) as e:
            raise UsageError(f"{where}: not a masklab model card (needs name, arch, categories): {type(e).__name__}: {e}") from None

    @classmethod
    def _from_v2(cls, doc: Mapping[str, Any]) -> ModelCard:
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values = {k: v for k, v in doc.items() if k in known}
        extra = {k: v for k, v in doc.items() if k not in known and k not in ("format", "num_classes")}
        for k in ("categories", "image_mean", "image_std", "tags", "class_names", "reproduce"):
            if values.get(k) is not None:
                values[k] = tuple(values[k])
        if values.get("weights") is not None:
            values["weights"] = WeightsRef(**values["weights"])
        return cls(**values, extra=extra)

    @classmethod
    def _from_trained_v1(cls, doc: Mapping[str, Any]) -> ModelCard:
        used = {"format", "name", "arch", "categories", "num_classes", "min_size", "max_size", "preprocessing",
                "weights", "score", "trained", "description", "license", "storage", "reproduce", "notes", "base_model"}
        score = dict(doc.get("score") or {})
        return cls(
            **_identity(doc),
            weights=WeightsRef(file=str(doc["weights"]), storage=str(doc.get("storage", "float32"))),
            metrics=score,
            description=str(doc.get("description", "")),
            license=str(doc.get("license", "")),
            base_model=doc.get("base_model"),
            trained=doc.get("trained"),
            reproduce=tuple(doc.get("reproduce", ())),
            notes=str(doc.get("notes", "")),
            extra={k: v for k, v in doc.items() if k not in used},
        )

    @classmethod
    def _from_export_v1(cls, doc: Mapping[str, Any]) -> ModelCard:
        o, pre = doc["options"], doc.get("preprocessing") or {}
        base = cls._from_zoo_v0(doc)
        return base.replace(
            min_size=int(o["min_size"]),
            max_size=int(o["max_size"]),
            image_mean=tuple(pre.get("image_mean", IMAGENET_MEAN)),
            image_std=tuple(pre.get("image_std", IMAGENET_STD)),
            score_thresh=float(o["score_thresh"]),
            nms_thresh=float(o["nms_thresh"]),
            max_detections=int(o["max_detections"]),
            proposals=int(o["rpn_post_nms_top_n"]),
            mask_threshold=float(doc.get("mask_threshold", 0.5)),
            weights=None,
            export_format=doc.get("format"),
            source_weights=doc.get("source_weights"),
            outputs=doc.get("outputs"),
            masklab_version=doc.get("masklab_version"),
        )

    @classmethod
    def _from_zoo_v0(cls, doc: Mapping[str, Any]) -> ModelCard:
        w = doc.get("weights")
        weights = None
        if isinstance(w, Mapping):
            weights = WeightsRef(file=w.get("filename"), url=w.get("url"), sha256=w.get("sha256") or None)
        elif isinstance(w, str):
            weights = WeightsRef(file=w)
        return cls(
            **_identity(doc),
            score_thresh=None if doc.get("score_thresh") is None else float(doc["score_thresh"]),
            weights=weights,
            metrics=dict(doc.get("published") or {}),
            tags=tuple(doc.get("tags", ())),
            description=str(doc.get("description", "")),
            license=str(doc.get("license", "")),
        )


def _identity(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The fields every card schema has had, under the same names."""
    return {
        "name": str(doc["name"]),
        "arch": str(doc["arch"]),
        "categories": tuple(doc["categories"]),
        "min_size": int(doc["min_size"]),
        "max_size": int(doc["max_size"]),
    }
