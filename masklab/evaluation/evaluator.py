"""Score predictions against a COCO ground truth: COCO metrics, per-class AP, confusion, counting.

Two entry points, no files needed (the training loop calls the second every epoch):

    >>> gt = CocoGroundTruth.load("val.json")                                    # doctest: +SKIP
    >>> result = evaluate_results(gt, json.load(open("results.json")))          # COCO results list
    >>> result = evaluate_instances(gt, {image_id: instances, ...})             # masklab Instances
    >>> result.segm["AP"], result.bbox["AP50"], result.counts["overall"]["mae"]
    >>> write_report(result, "runs/eval-1")                                      # masklab.evaluation.report

Models and data are matched by category *name* (see :func:`match_categories`), so a model's own ids
never need to equal the dataset's (non-contiguous) ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from masklab.data.coco import CocoGroundTruth, annotation_to_rle
from masklab.errors import DatasetError, UsageError
from masklab.evaluation.boundary import DILATION_RATIO
from masklab.evaluation.coco_metrics import CocoTypeResult, run_cocoeval
from masklab.evaluation.confusion import ConfusionMatrix, CountTable, confusion_matrix, count_table, match_image
from masklab.evaluation.mask_quality import QualityReport, quality_report
from masklab.structures.instances import Instances

__all__ = [
    "EvalResult",
    "evaluate_results",
    "evaluate_instances",
    "match_categories",
    "check_results",
    "instances_to_results",
    "predict_dataset",
    "model_class_names",
]

#: score at or above which a prediction counts, for the confusion matrix and counting accuracy
COUNT_THRESH = 0.5


@dataclass
class EvalResult:
    """Everything one evaluation measured.

    Attributes:
        bbox, segm: COCO metrics per type (:class:`CocoTypeResult`); ``segm`` is None when the
            predictions carry no masks.
        boundary: Boundary AP (:mod:`masklab.evaluation.boundary`, dilation ``dilation_ratio`` of the
            image diagonal), None where ``segm`` is.
        quality: how well the predictions' mask ``quality`` predicts their true IoU
            (:class:`~masklab.evaluation.mask_quality.QualityReport`), None when they carry none.
        confusion: class confusion matrix at IoU ``iou_thresh`` for predictions with score >= ``count_thresh``.
        count_table: per-image object counts (same predictions as the confusion matrix).
        categories: ``{dataset category id: name}``; gt_instances: ``{id: non-crowd ground-truth count}``.
        num_images, num_predictions: evaluated images and predictions (all scores).
        notes: human-readable remarks (classes that match nothing, predictions dropped...).
        failures: ``[(image id, error message)]`` for images that could not be predicted (model runs).
    """

    bbox: CocoTypeResult
    segm: CocoTypeResult | None
    confusion: ConfusionMatrix
    count_table: CountTable
    categories: dict[int, str]
    gt_instances: dict[int, int]
    num_images: int
    num_predictions: int
    notes: list[str] = field(default_factory=list)
    failures: list[tuple[int, str]] = field(default_factory=list)
    boundary: CocoTypeResult | None = None
    quality: QualityReport | None = None
    dilation_ratio: float = DILATION_RATIO

    @property
    def counts(self) -> dict:
        """Counting accuracy summary (see :meth:`CountTable.summary`)."""
        return self.count_table.summary()

    def per_class(self) -> dict[str, dict]:
        """``{name: {"category_id", "gt_instances", "bbox": {AP, AP50, AP75}, "segm": {...} or None,
        "boundary": {...} or None}}``."""
        out = {}
        for cid, name in self.categories.items():
            out[name] = {
                "category_id": cid,
                "gt_instances": self.gt_instances.get(cid, 0),
                "bbox": self.bbox.per_class.get(cid),
                "segm": None if self.segm is None else self.segm.per_class.get(cid),
                "boundary": None if self.boundary is None else self.boundary.per_class.get(cid),
            }
        return out

    def to_dict(self) -> dict[str, Any]:
        """The ``eval.json`` content: fractions in [0, 1]; ``null`` where a metric is undefined."""
        return {
            "bbox": dict(self.bbox.stats),
            "segm": None if self.segm is None else dict(self.segm.stats),
            "boundary": None if self.boundary is None else dict(self.boundary.stats),
            "boundary_dilation_ratio": self.dilation_ratio,
            "quality": None if self.quality is None else self.quality.to_dict(),
            "per_class": self.per_class(),
            "counts": self.counts,
            "confusion": self.confusion.to_dict(),
            "images": self.num_images,
            "predictions": self.num_predictions,
            "notes": list(self.notes),
            "failures": [{"image_id": i, "error": e} for i, e in self.failures],
        }


def _norm(name: str) -> str:
    return " ".join(name.strip().lower().replace("_", " ").split())


def match_categories(model_names: Sequence[str], gt: CocoGroundTruth) -> dict[str, int]:
    """Map model class names to dataset category ids by name.

    Names match exactly, else case-, whitespace- and underscore-insensitively (``"Traffic_Light"`` ==
    ``"traffic light"``). Model classes without a dataset category are left out (their predictions are
    dropped); dataset categories without a model class simply score 0.

    Raises:
        UsageError: when no model class matches any dataset category, listing both sets of names.
    """
    by_exact = {name: cid for cid, name in gt.categories.items()}
    by_norm = {_norm(name): cid for cid, name in gt.categories.items()}
    mapping = {}
    for name in model_names:
        if name in by_exact:
            mapping[name] = by_exact[name]
        elif _norm(name) in by_norm:
            mapping[name] = by_norm[_norm(name)]
    if model_names and not mapping:
        raise UsageError(
            "none of the model's class names match a dataset category (matched by name):\n"
            f"model classes: {', '.join(sorted(model_names))}\n"
            f"dataset categories: {', '.join(gt.categories.values())}"
        )
    return mapping


def _number(value: Any, what: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if not np.isfinite(v) or isinstance(value, bool):
        raise DatasetError(f"{what} must be a finite number, found {value!r}")
    return v


def check_results(gt: CocoGroundTruth, results: Any) -> list[dict]:
    """Validate COCO results against ``gt`` and normalise them (a new list; the input is untouched).

    Each entry needs ``image_id`` (an image of ``gt``), ``category_id`` (a dataset category), ``score``
    (any finite number, as pycocotools accepts) and ``bbox`` [x, y, w, h] and/or
    ``segmentation`` (RLE or polygons; turned into compressed RLE with str counts). All entries must
    carry masks or none (else mask AP would be silently wrong).

    Raises:
        DatasetError: naming the first bad entries, e.g. predictions for images not in the ground truth.
    """
    if not isinstance(results, list):
        raise DatasetError(f"predictions: expected a list of COCO result objects, found {type(results).__name__}")
    unknown_images: list = []
    unknown_cats: list = []
    out = []
    for i, r in enumerate(results):
        if not isinstance(r, dict):
            raise DatasetError(f"predictions[{i}]: expected an object, found {type(r).__name__}")
        missing = [k for k in ("image_id", "category_id", "score") if k not in r]
        if missing or ("bbox" not in r and "segmentation" not in r):
            raise DatasetError(f"predictions[{i}]: needs image_id, category_id, score and bbox or segmentation; missing {missing or ['bbox/segmentation']}")
        for key in ("image_id", "category_id"):
            if not isinstance(r[key], (int, np.integer)) or isinstance(r[key], bool):
                raise DatasetError(f"predictions[{i}]: {key} must be an integer, found {r[key]!r}")
        if r["image_id"] not in gt.images:
            unknown_images.append(r["image_id"])
            continue
        if r["category_id"] not in gt.categories:
            unknown_cats.append(r["category_id"])
            continue
        score = _number(r["score"], f"predictions[{i}]: score")
        e = {"image_id": r["image_id"], "category_id": r["category_id"], "score": score}
        if r.get("quality") is not None:  # masklab's per-instance mask quality, kept for the quality report
            e["quality"] = _number(r["quality"], f"predictions[{i}]: quality")
        img = gt.images[r["image_id"]]
        if "segmentation" in r:
            rle = annotation_to_rle(r["segmentation"], img.height, img.width, where=f"predictions[{i}]")
            e["segmentation"] = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii") if isinstance(rle["counts"], bytes) else rle["counts"]}
        if "bbox" in r:
            b = r["bbox"]
            if not (isinstance(b, (list, tuple)) and len(b) == 4):
                raise DatasetError(f"predictions[{i}]: bbox must be [x, y, width, height], found {b!r}")
            e["bbox"] = [_number(v, f"predictions[{i}]: bbox") for v in b]
        out.append(e)
    if unknown_images:
        shown = sorted(set(unknown_images), key=str)[:5]
        raise DatasetError(
            f"{len(unknown_images)} predictions are for images not in the ground truth {gt.source_name} "
            f"(image ids {shown}{'...' if len(set(unknown_images)) > 5 else ''}); "
            "predictions and ground truth must use the same image ids"
        )
    if unknown_cats:
        raise DatasetError(
            f"{len(unknown_cats)} predictions have category ids not in the ground truth: {sorted(set(unknown_cats))[:10]}; "
            f"dataset ids: {list(gt.categories)}"
        )
    with_masks = sum("segmentation" in e for e in out)
    if 0 < with_masks < len(out):
        raise DatasetError(f"predictions: {with_masks} of {len(out)} entries have a 'segmentation'; give masks for all or none")
    if with_masks:
        from pycocotools import mask as mask_utils

        for e in out:
            if "bbox" not in e:
                e["bbox"] = [float(v) for v in mask_utils.toBbox({**e["segmentation"], "counts": e["segmentation"]["counts"].encode("ascii")})]
    return out


def evaluate_results(gt: CocoGroundTruth, results: Any, *, count_thresh: float = COUNT_THRESH, iou_thresh: float = 0.5,
                     notes: Sequence[str] = (), dilation_ratio: float = DILATION_RATIO) -> EvalResult:
    """Score COCO results (dataset category ids) against ``gt``.

    Args:
        gt: the ground truth.
        results: list of COCO result dicts (see :func:`check_results`); may be empty (AP 0, no crash).
        count_thresh: operating point for the confusion matrix and the counts (a prediction with a score
            at or above it counts), in [0, 1]; the COCO metrics always use every prediction. Not the model's
            score threshold, which decides what the predictions hold in the first place.
        iou_thresh: IoU for a match in the confusion matrix (and crowd-ignore), in (0, 1].
        dilation_ratio: Boundary AP's boundary width, a fraction of the image diagonal (0.02 as the paper).

    Results carrying ``quality`` (masklab's) also get the quality report (``EvalResult.quality``).
    """
    if not 0.0 <= count_thresh <= 1.0:
        raise UsageError(f"count_thresh must be in [0, 1], found {count_thresh}")
    if not 0.0 < iou_thresh <= 1.0:
        raise UsageError(f"iou_thresh must be in (0, 1], found {iou_thresh}")
    checked = check_results(gt, results)
    use_masks = bool(checked) and "segmentation" in checked[0]
    coco_gt = gt.coco_api()
    bbox = run_cocoeval(coco_gt, checked, "bbox")
    # With no predictions, mask AP is as defined (0) as box AP; only box-only results have no mask AP.
    segm = run_cocoeval(coco_gt, checked, "segm") if use_masks or not checked else None
    boundary = run_cocoeval(coco_gt, checked, "boundary", dilation_ratio=dilation_ratio) if segm is not None else None
    quality = None
    if use_masks:
        quality = quality_report(gt, checked, score_thresh=count_thresh, dilation_ratio=dilation_ratio,
                                 plain={"segm": segm.stats["AP"], "boundary": boundary.stats["AP"]})
    by_image: dict[int, list[dict]] = {i: [] for i in gt.images}
    for e in checked:
        by_image[e["image_id"]].append(e)
    matches = [
        match_image(gt.annotations(i), by_image[i], image_size=(img.height, img.width), use_masks=use_masks,
                    iou_thresh=iou_thresh, score_thresh=count_thresh)
        for i, img in gt.images.items()
    ]
    gt_instances = {cid: 0 for cid in gt.categories}
    for a in gt.dataset["annotations"]:
        if not a["iscrowd"]:
            gt_instances[a["category_id"]] += 1
    return EvalResult(
        bbox=bbox,
        segm=segm,
        confusion=confusion_matrix(matches, gt.categories, iou_thresh=iou_thresh, score_thresh=count_thresh),
        count_table=count_table(list(gt.images), matches, gt.categories, score_thresh=count_thresh),
        categories=dict(gt.categories),
        gt_instances=gt_instances,
        num_images=len(gt.images),
        num_predictions=len(checked),
        notes=list(notes),
        boundary=boundary,
        quality=quality,
        dilation_ratio=dilation_ratio,
    )


@dataclass
class ConvertedResults:
    """``results``: COCO results dicts in dataset category ids; ``notes``: what was dropped or is missing."""

    results: list[dict]
    notes: list[str]


@dataclass
class DatasetPredictions:
    """``predictions``: ``{image id: Instances}``; ``failures``: ``[(image id, message)]`` for images not predicted."""

    predictions: dict[int, Instances]
    failures: list[tuple[int, str]]


def instances_to_results(gt: CocoGroundTruth, predictions: Mapping[int, Instances], *,
                         model_classes: Sequence[str] | None = None) -> ConvertedResults:
    """Convert ``{image id: Instances}`` to COCO results in dataset category ids (labels matched by name,
    see :func:`match_categories`); the CLI saves them as ``predictions.json``."""
    unknown = [i for i in predictions if i not in gt.images]
    if unknown:
        raise DatasetError(
            f"predictions for {len(unknown)} images not in the ground truth {gt.source_name}: image ids {sorted(unknown, key=str)[:5]}"
        )
    labels = set(model_classes) if model_classes is not None else {lab for inst in predictions.values() for lab in inst.labels}
    mapping = match_categories(sorted(labels), gt)
    notes = []
    extra = sorted(labels - set(mapping))
    if extra:
        notes.append(f"model classes with no dataset category (their predictions are dropped): {', '.join(extra)}")
    absent = [n for cid, n in gt.categories.items() if cid not in set(mapping.values())]
    if absent and labels:
        notes.append(f"dataset categories no model class matches (never predicted): {', '.join(absent)}")
    missing = [i for i in gt.images if i not in predictions]
    if missing:
        notes.append(f"{len(missing)} images had no predictions entry (scored as no detections)")
    results = []
    dropped = 0
    for image_id, inst in predictions.items():
        img = gt.images[image_id]
        if inst.image_size != (img.height, img.width):
            raise DatasetError(
                f"image {image_id}: predictions are for a {inst.image_size[1]}x{inst.image_size[0]} (WxH) image, "
                f"the ground truth says {img.width}x{img.height}"
            )
        keep = np.array([lab in mapping for lab in inst.labels], bool)
        dropped += int((~keep).sum())
        results.extend(inst[keep].to_coco(image_id, category_ids=mapping))
    if dropped:
        notes.append(f"{dropped} predictions of classes not in the dataset were dropped")
    return ConvertedResults(results, notes)


def evaluate_instances(gt: CocoGroundTruth, predictions: Mapping[int, Instances], *,
                       model_classes: Sequence[str] | None = None, count_thresh: float = COUNT_THRESH,
                       iou_thresh: float = 0.5, dilation_ratio: float = DILATION_RATIO) -> EvalResult:
    """Score masklab predictions: ``{image id: Instances}`` (labels matched to dataset names).

    Args:
        gt: the ground truth.
        predictions: per image id of ``gt``, the model's :class:`Instances` (its ``image_size`` must be
            the image's); a missing image counts as no detections (and is noted).
        model_classes: every class name the model can output (e.g. a Segmenter's categories); used to
            tell "the model's classes share no name with the data" (UsageError) even with no detections.
            Default: the labels present in ``predictions``.
        count_thresh, iou_thresh: as :func:`evaluate_results`.
    """
    conv = instances_to_results(gt, predictions, model_classes=model_classes)
    return evaluate_results(gt, conv.results, count_thresh=count_thresh, iou_thresh=iou_thresh, notes=conv.notes,
                            dilation_ratio=dilation_ratio)


def model_class_names(segmenter) -> list[str]:
    """The class names a :class:`~masklab.inference.segmenter.Segmenter` can output (no background/"N/A")."""
    return [c for c in segmenter.spec.categories if c not in ("__background__", "N/A", "BG")]


def predict_dataset(gt: CocoGroundTruth, segmenter, *, progress: bool | None = None) -> DatasetPredictions:
    """Run ``segmenter.predict`` over every image of ``gt``, one image at a time.

    An image that cannot be loaded (missing file, wrong size, corrupt) does not stop the run: it is
    returned in the failures list ``[(image id, message)]`` and left out of the predictions.
    ``progress``: True/None for a tqdm bar when on a terminal, False for none.
    """
    from masklab.errors import MasklabError

    ids = list(gt.images)
    bar = None
    if progress is not False:
        import sys

        from tqdm import tqdm

        bar = tqdm(total=len(ids), desc="eval", unit="img", disable=progress is None and not sys.stderr.isatty())
    preds: dict[int, Instances] = {}
    failures: list[tuple[int, str]] = []
    for image_id in ids:
        try:
            image = gt.load_image(image_id)
        except MasklabError as e:
            failures.append((image_id, str(e)))
        else:
            preds[image_id] = segmenter.predict([image])[0]
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return DatasetPredictions(preds, failures)
