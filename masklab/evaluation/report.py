"""Write an :class:`~masklab.evaluation.evaluator.EvalResult` to a folder, and the short stdout table.

``write_report(result, out_dir)`` writes:

- ``eval.json``: ``{"bbox": {...}, "segm": {...}, "boundary": {...}, "quality": {...}, "per_class": {...},
  "counts": {...}, "confusion": {...}, ...}`` (fractions in [0, 1]; ``null`` where pycocotools reports -1,
  i.e. undefined; ``boundary`` is Boundary AP, ``quality`` how well mask quality predicts true IoU);
- ``quality_calibration.png``: true mask IoU against mask quality (when the predictions carry quality);
- ``confusion.json`` and ``confusion.png``: the class confusion matrix at IoU 0.5;
- ``pr/overall.png`` and ``pr/<id>_<name>.png``: precision-recall curves (mask and box, IoU 0.50 and 0.75);
- ``counts.csv``: true and predicted object counts per image and class;
- ``diff/<image id>.png`` (with ``differences``, from :func:`~masklab.evaluation.differences.write_differences`):
  ground truth vs prediction per image, linked from the report;
- ``report.md``: the tables and the pictures.
"""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from masklab.evaluation.coco_metrics import STAT_NAMES, CocoTypeResult
from masklab.evaluation.evaluator import EvalResult
from masklab.io.atomic import atomic_write_json, atomic_write_text

__all__ = ["write_report", "format_table", "pr_curves", "pr_picture"]

_IOUS = (0.5, 0.75)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "class"


def _fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


_TYPE_NAMES = {"segm": "mask", "boundary": "boundary", "bbox": "box"}


def _types(result: EvalResult) -> list[tuple[str, CocoTypeResult]]:
    pairs = (("segm", result.segm), ("boundary", result.boundary), ("bbox", result.bbox))
    return [(t, r) for t, r in pairs if r is not None]


def pr_curves(tr: CocoTypeResult, category_id: int | None) -> dict[float, np.ndarray]:
    """Precision (R,) at IoU 0.50 and 0.75 for one class, or averaged over classes with ground truth
    (``category_id=None``; its mean over recall is pycocotools' AP50/AP75). -1 where undefined."""
    out = {}
    for iou in _IOUS:
        t = int(np.argmin(np.abs(tr.iou_thresholds - iou)))
        p = tr.precision[t]  # (R, K)
        if category_id is not None:
            out[iou] = p[:, tr.category_ids.index(category_id)].copy()
            continue
        valid = (p > -1).all(axis=0)
        out[iou] = p[:, valid].mean(axis=1) if valid.any() else np.full(p.shape[0], -1.0)
    return out


def pr_picture(result: EvalResult, category_id: int | None = None):
    """The precision-recall figure of one class (``None``: all classes) as :func:`write_report` draws it:
    a mask panel and a box panel, each with the curves at IoU 0.50 (blue) and 0.75 (orange)."""
    from masklab.evaluation.plots import pr_figure

    if category_id is None:
        title = "all classes (mean over classes with ground truth)"
    else:
        name = result.categories[category_id]
        title = f"{name} (id {category_id}, {result.gt_instances.get(category_id, 0)} objects)"
    curves: dict[tuple[str, float], np.ndarray] = {}
    ap: dict[tuple[str, float], float | None] = {}
    recall = result.bbox.recall_thresholds
    for t, tr in _types(result):
        for iou, prec in pr_curves(tr, category_id).items():
            curves[(t, iou)] = prec
            src = tr.stats if category_id is None else tr.per_class[category_id]
            ap[(t, iou)] = src["AP50" if iou == 0.5 else "AP75"]
    return pr_figure(curves, recall, title=title, ap=ap)


def _counts_csv(result: EvalResult) -> str:
    ct = result.count_table
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image_id", "gt_total", "pred_total"] + [f"{k}_{n}" for n in ct.names for k in ("gt", "pred")])
    for r, image_id in enumerate(ct.image_ids):
        row: list[Any] = [image_id, int(ct.gt[r].sum()), int(ct.pred[r].sum())]
        for k in range(len(ct.names)):
            row += [int(ct.gt[r, k]), int(ct.pred[r, k])]
        w.writerow(row)
    return buf.getvalue()


def write_report(result: EvalResult, out_dir: str | os.PathLike, *, plots: bool = True,
                 settings: dict | None = None, differences: list | None = None) -> dict[str, Path]:
    """Write the evaluation folder (see the module docstring); ``settings`` are stored in ``eval.json``.

    Returns ``{kind: path}`` of what was written (``eval_json``, ``report_md``, ``confusion_png``, ...).

    ``plots=False`` skips the PNGs (no matplotlib needed). Every file is written atomically.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    doc = result.to_dict()
    if settings is not None:
        doc["settings"] = settings
    files["eval_json"] = atomic_write_json(out / "eval.json", doc, indent=2)
    files["confusion_json"] = atomic_write_json(out / "confusion.json", result.confusion.to_dict(), indent=2)
    files["counts_csv"] = atomic_write_text(out / "counts.csv", _counts_csv(result))
    pictures: dict[str, str] = {}
    if plots:
        from masklab.evaluation.plots import confusion_figure, save_figure

        cm = result.confusion
        fig = confusion_figure(cm.matrix, cm.labels, title=f"IoU >= {cm.iou_thresh:g}, score >= {cm.score_thresh:g}; colour = share of row")
        save_figure(fig, out / "confusion.png")
        files["confusion_png"] = out / "confusion.png"
        save_figure(pr_picture(result, None), out / "pr" / "overall.png")
        pictures["overall"] = "pr/overall.png"
        for cid, name in result.categories.items():
            rel = f"pr/{cid}_{_slug(name)}.png"
            save_figure(pr_picture(result, cid), out / rel)
            pictures[name] = rel
        files["pr_dir"] = out / "pr"
        if result.quality is not None:
            from masklab.evaluation.plots import calibration_figure

            q = result.quality
            title = f"{q.predictions} predictions (score >= {q.score_thresh:g}); Spearman {_fmt(q.spearman)}"
            save_figure(calibration_figure(q.calibration, title=title), out / "quality_calibration.png")
            files["quality_png"] = out / "quality_calibration.png"
    text = _markdown(result, pictures, plots) + (_differences_md(result, differences) if differences else "")
    files["report_md"] = atomic_write_text(out / "report.md", text)
    return files


def _markdown(result: EvalResult, pictures: dict[str, str], plots: bool) -> str:
    lines = ["# Evaluation report", ""]
    lines.append(f"{result.num_images} images, {sum(result.gt_instances.values())} ground-truth objects "
                 f"(crowd regions excluded), {result.num_predictions} predictions.")
    lines.append("Numbers are fractions in [0, 1] from pycocotools' COCOeval; `-` = undefined (pycocotools' -1).")
    lines.append("")
    for note in result.notes:
        lines.append(f"- note: {note}")
    for image_id, err in result.failures:
        lines.append(f"- failed: image {image_id}: {err}")
    if result.notes or result.failures:
        lines.append("")
    lines += ["## COCO metrics", "", "| metric | " + " | ".join(_TYPE_NAMES[t] for t, _ in _types(result)) + " |",
              "|---|" + "---:|" * len(_types(result))]
    for name in STAT_NAMES:
        lines.append(f"| {name} | " + " | ".join(_fmt(tr.stats[name]) for _, tr in _types(result)) + " |")
    lines += ["", "## Per class", ""]
    counts = result.counts
    head = "| class | id | objects | mask AP | mask AP50 | boundary AP | box AP | box AP50 | count MAE | exact count |"
    lines += [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, pc in result.per_class().items():
        segm, bnd = pc["segm"] or {}, pc["boundary"] or {}
        c = counts["per_class"][name]
        lines.append(
            f"| {name} | {pc['category_id']} | {pc['gt_instances']} | {_fmt(segm.get('AP'))} | {_fmt(segm.get('AP50'))} | "
            f"{_fmt(bnd.get('AP'))} | "
            f"{_fmt(pc['bbox']['AP'])} | {_fmt(pc['bbox']['AP50'])} | {_fmt(c['mae'])} | {_fmt(c['exact'])} |"
        )
    lines += _quality_md(result, plots)
    o = counts["overall"]
    lines += [
        "",
        f"## Counting (predictions with score >= {counts['score_thresh']:g})",
        "",
        f"Per image, all classes together: count MAE {_fmt(o['mae'])}, mean error (predicted - true) "
        f"{_fmt(o['mean_error'])}, exact count in {_fmt(o['exact'])} of images, every class exact in "
        f"{_fmt(o['exact_all_classes'])}; {o['pred_total']} predicted vs {o['gt_total']} true objects. "
        "Per image: `counts.csv`.",
        "",
        f"## Confusion matrix (IoU >= {result.confusion.iou_thresh:g})",
        "",
        "Rows: ground truth; columns: prediction; `background` row = false positives, column = missed objects. "
        "Data: `confusion.json`.",
        "",
    ]
    if plots:
        lines += ["![confusion matrix](confusion.png)", "", "## Precision-recall curves", ""]
        lines += [f"![{name}]({rel})" for name, rel in pictures.items()]
    lines.append("")
    return "\n".join(lines)


def _quality_md(result: EvalResult, plots: bool) -> list[str]:
    """The report's "Mask quality" section (empty when the predictions carry no quality)."""
    q = result.quality
    if q is None:
        return []
    r = q.rescored
    lines = ["", "## Mask quality", "",
             f"Spearman rank correlation of each prediction's mask quality with its true mask IoU (best IoU with a "
             f"same-class object; predictions with score >= {q.score_thresh:g}, {q.predictions} of them): "
             f"**{_fmt(q.spearman)}**.", "",
             "| scores | mask AP | boundary AP |", "|---|---:|---:|",
             f"| as predicted | {_fmt(r['segm_AP'])} | {_fmt(r['boundary_AP'])} |",
             f"| score x quality | {_fmt(r['segm_AP_rescored'])} | {_fmt(r['boundary_AP_rescored'])} |"]
    if plots:
        lines += ["", "![mask quality calibration](quality_calibration.png)"]
    return lines


def _differences_md(result: EvalResult, differences: list) -> str:
    """The report's "Ground truth vs prediction" section: one row and link per image."""
    cm = result.confusion
    lines = ["## Ground truth vs prediction", "",
             f"Per image, predictions with score >= {cm.score_thresh:g} matched at IoU >= {cm.iou_thresh:g}: green = "
             "correct (captioned with IoU and score), orange = matched an object of another class, red = false "
             "positive, blue = missed object.", "",
             "| image | correct | wrong class | false positives | missed | picture |", "|---:|---:|---:|---:|---:|---|"]
    for d in differences:
        link = f"[{d.file}]({d.file})" if d.file else f"not drawn: {d.error}"
        lines.append(f"| {d.image_id} | {d.true_positives} | {d.confused} | {d.false_positives} | {d.missed} | {link} |")
    return "\n".join(lines + [""])


def format_table(result: EvalResult) -> str:
    """The short stdout table: COCO AP/AP50/AP75/AR100 for masks and boxes, and the count error."""
    rows = [("", "AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")]
    for t, tr in _types(result):
        rows.append((_TYPE_NAMES[t], *(_fmt(tr.stats[k]) for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    if result.quality is not None:
        q = result.quality
        lines.append(f"mask quality vs true IoU: Spearman {_fmt(q.spearman)} ({q.predictions} predictions); "
                     f"mask AP rescored by quality {_fmt(q.rescored['segm_AP_rescored'])}")
    o = result.counts["overall"]
    lines.append(f"count: MAE {_fmt(o['mae'])}, exact {_fmt(o['exact'])} of {result.num_images} images "
                 f"(score >= {result.counts['score_thresh']:g})")
    return "\n".join(lines)
