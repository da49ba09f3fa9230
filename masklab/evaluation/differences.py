"""Ground truth vs prediction, per image (the tutorial's ``display_differences``): ``masklab eval --diff``.

The matching is the confusion matrix's (:func:`~masklab.evaluation.confusion.match_image`: predictions
with score >= the count threshold, greedy by score, IoU >= the IoU threshold, mask IoU when predictions
have masks). Each picture colours:

- **green** a true positive (matched, same class), captioned with IoU and score;
- **orange** a prediction matched to an object of another class ("truth as predicted", IoU, score);
- **red** a false positive (a prediction that matches no object), with its score;
- **blue** a missed object (ground truth no prediction matched), outlined.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from masklab.data.coco import CocoGroundTruth, annotation_to_rle
from masklab.errors import MasklabError
from masklab.evaluation.confusion import ImageMatch, match_image
from masklab.evaluation.evaluator import check_results
from masklab.io.atomic import atomic_save_image

__all__ = ["ImageDifferences", "draw_differences", "write_differences", "COLORS"]

#: RGB per outcome
COLORS = {"tp": (40, 200, 60), "confused": (255, 150, 0), "fp": (230, 30, 30), "missed": (40, 110, 255)}
_LEGEND = (("correct", "tp"), ("wrong class", "confused"), ("false positive", "fp"), ("missed", "missed"))
_MIN_SIDE = 360  # small images are enlarged (nearest neighbour, up to 4x) so the captions stay readable


@dataclass(frozen=True)
class ImageDifferences:
    """One image's outcome: ``image_id``; ``file`` the picture's path relative to the report folder (None
    when the image could not be drawn, ``error`` says why); counts of ``true_positives``, ``confused``
    (matched to another class), ``false_positives`` and ``missed``."""

    image_id: int
    file: str | None
    true_positives: int
    confused: int
    false_positives: int
    missed: int
    error: str | None = None


def _decode(rles: list, h: int, w: int) -> np.ndarray:
    from pycocotools import mask as mask_utils

    if not rles:
        return np.zeros((0, h, w), bool)
    return mask_utils.decode(rles).transpose(2, 0, 1).astype(bool)


def _label(canvas: np.ndarray, text: str, x: float, y: float, color) -> None:
    import cv2

    scale = 0.4 if min(canvas.shape[:2]) >= 300 else 0.32
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x0 = int(np.clip(x, 0, max(canvas.shape[1] - tw - 2, 0)))
    y0 = int(np.clip(y, th + base + 1, canvas.shape[0] - 1))
    cv2.rectangle(canvas, (x0, y0 - th - base - 1), (x0 + tw + 2, y0), color, -1)
    cv2.putText(canvas, text, (x0 + 1, y0 - base), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)


def _outline(canvas: np.ndarray, mask: np.ndarray, color, *, fill: float) -> None:
    import cv2

    if fill:
        canvas[mask] = ((1 - fill) * canvas[mask] + fill * np.asarray(color)).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(canvas, contours, -1, color, 2)


def draw_differences(image: np.ndarray, gt_anns: list[dict], preds: list[dict], match: ImageMatch, *,
                     categories: dict[int, str]) -> tuple[np.ndarray, dict[str, int]]:
    """RGB uint8 (H, W, 3) ``image`` with the outcome of ``match`` drawn (see the module docstring), and the
    counts ``{"tp", "confused", "fp", "missed"}``. ``gt_anns``: the image's completed COCO annotations;
    ``preds``: its checked COCO results (RLE masks), the list ``match`` was computed from."""
    h, w = image.shape[:2]
    f = int(np.clip(np.ceil(_MIN_SIDE / max(min(h, w), 1)), 1, 4))
    gts = [a for a in gt_anns if not a["iscrowd"]]
    gt_masks = _enlarge(_decode([annotation_to_rle(a["segmentation"], h, w) for a in gts], h, w), f)
    kept = [preds[int(k)] for k in match.pred_index]
    has_masks = bool(kept) and "segmentation" in kept[0]
    pred_masks = _enlarge(_decode([p["segmentation"] for p in kept], h, w), f) if has_masks else None
    canvas = _enlarge((0.75 * image).astype(np.uint8)[None], f)[0]
    pair_of_pred = {int(i): (int(j), float(iou)) for (j, i), iou in zip(match.pairs, match.pair_ious)}
    matched_gt = {int(j) for j, _ in match.pairs}
    counts = {"tp": 0, "confused": 0, "fp": 0, "missed": 0}
    labels = []
    for j, a in enumerate(gts):
        if j not in matched_gt:
            counts["missed"] += 1
            _outline(canvas, gt_masks[j], COLORS["missed"], fill=0.15)
            labels.append((f"missed {categories.get(a['category_id'], a['category_id'])}", a["bbox"], COLORS["missed"]))
    h, w = canvas.shape[:2]
    for i, p in enumerate(kept):
        name = categories.get(p["category_id"], str(p["category_id"]))
        x, y, bw, bh = p["bbox"]
        mask = pred_masks[i] if pred_masks is not None else _box_mask([v * f for v in p["bbox"]], h, w)
        if i in pair_of_pred:
            j, iou = pair_of_pred[i]
            same = gts[j]["category_id"] == p["category_id"]
            kind = "tp" if same else "confused"
            truth = categories.get(gts[j]["category_id"], "?")
            text = f"{name} IoU {iou:.2f} s {p['score']:.2f}" if same else f"{truth} as {name} IoU {iou:.2f} s {p['score']:.2f}"
        else:
            kind, text = "fp", f"FP {name} s {p['score']:.2f}"
        counts[kind] += 1
        _outline(canvas, mask, COLORS[kind], fill=0.45)
        labels.append((text, (x, y, bw, bh), COLORS[kind]))
    for text, (x, y, _, _), color in labels:  # captions last, over every mask
        _label(canvas, text, x * f, y * f - 2, color)
    return _with_legend(canvas), counts


def _enlarge(stack: np.ndarray, f: int) -> np.ndarray:
    """(N, H, W[, 3]) -> (N, H*f, W*f[, 3]), each pixel repeated f x f times."""
    return stack if f == 1 else stack.repeat(f, axis=1).repeat(f, axis=2)


def _box_mask(xywh, h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    x, y, bw, bh = (int(round(v)) for v in xywh)
    m[max(y, 0) : max(y + bh, 0), max(x, 0) : max(x + bw, 0)] = True
    return m


def _with_legend(canvas: np.ndarray) -> np.ndarray:
    import cv2

    strip = np.full((24, canvas.shape[1], 3), 255, np.uint8)
    x = 4
    for text, kind in _LEGEND:
        cv2.rectangle(strip, (x, 6), (x + 12, 18), COLORS[kind], -1)
        cv2.putText(strip, text, (x + 16, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        x += 16 + cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)[0][0] + 12
    return np.concatenate([strip, canvas], 0)


def write_differences(gt: CocoGroundTruth, results: list, out_dir: str | os.PathLike, *, iou_thresh: float,
                      score_thresh: float, folder: str = "diff") -> list[ImageDifferences]:
    """Write ``out_dir/<folder>/<image id>.png`` for every image of ``gt`` (PNG, atomically); an image whose
    file cannot be read gets ``error`` instead of a picture (the others are still drawn)."""
    checked = check_results(gt, results)
    use_masks = bool(checked) and "segmentation" in checked[0]
    by_image: dict[int, list[dict]] = {i: [] for i in gt.images}
    for e in checked:
        by_image[e["image_id"]].append(e)
    out = []
    for image_id, img in gt.images.items():
        anns, preds = gt.annotations(image_id), by_image[image_id]
        match = match_image(anns, preds, image_size=(img.height, img.width), use_masks=use_masks,
                            iou_thresh=iou_thresh, score_thresh=score_thresh)
        try:
            array = gt.load_image(image_id).array
        except (MasklabError, OSError) as e:
            out.append(ImageDifferences(image_id, None, 0, 0, 0, 0, error=str(e).splitlines()[0]))
            continue
        drawn, c = draw_differences(array, anns, preds, match, categories=gt.categories)
        rel = f"{folder}/{image_id}.png"
        atomic_save_image(Path(out_dir) / rel, drawn)
        out.append(ImageDifferences(image_id, rel, c["tp"], c["confused"], c["fp"], c["missed"]))
    return out
