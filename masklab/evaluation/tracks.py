"""Tracking metrics from MOTChallenge files: MOTA, IDF1, id switches (motmetrics), HOTA, counting accuracy.

- **CLEAR MOT and identity metrics** come from ``motmetrics`` (py-motmetrics, MIT): both files are read
  with its own MOTChallenge loader and compared with its ``compare_to_groundtruth`` at box IoU >=
  ``iou`` (default 0.5): ``mota``, ``motp`` (mean IoU of matches, masklab's convention: 1 = perfect),
  ``idf1``, ``num_switches``, precision, recall, false positives, misses.
- **HOTA** (Luiten et al., IJCV 2021) follows TrackEval's ``HOTA`` metric step for step (box IoU
  similarity, alphas 0.05, 0.10, ..., 0.95; HOTA, DetA, AssA are their means over alpha): motmetrics'
  released versions have no HOTA, and TrackEval's package pins ``opencv-python``, which clashes with
  masklab's ``opencv-python-headless``. The tests check it on hand-computed cases.
- **Counting accuracy** compares two ``counts.json`` documents line by line (:func:`count_errors`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from masklab.errors import UsageError
from masklab.io.formats.mot import MotRow, read_mot
from masklab.optional import require

__all__ = ["evaluate_tracks", "hota", "count_errors", "CLEAR_METRICS"]

#: motmetrics metric names reported, in order.
CLEAR_METRICS = ("mota", "motp", "idf1", "idp", "idr", "num_switches", "precision", "recall", "num_false_positives",
                 "num_misses", "num_matches", "num_objects", "num_unique_objects", "mostly_tracked", "num_frames")
_EPS = np.finfo(float).eps


def _box_iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(-1, 4), b.reshape(-1, 4)
    a2, b2 = a.copy(), b.copy()
    a2[:, 2:] += a2[:, :2]
    b2[:, 2:] += b2[:, :2]
    lt, rb = np.maximum(a2[:, None, :2], b2[None, :, :2]), np.minimum(a2[:, None, 2:], b2[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, _EPS), 0.0)


def _by_frame(rows: Sequence[MotRow]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    out: dict[int, list] = {}
    for r in rows:
        out.setdefault(r.frame, []).append((r.track_id, r.x, r.y, r.w, r.h))
    return {f: (np.array([v[0] for v in vs]), np.array([v[1:] for v in vs], np.float64)) for f, vs in out.items()}


def hota(gt: Sequence[MotRow], pred: Sequence[MotRow]) -> dict[str, float]:
    """``{"hota", "deta", "assa", "loca"}`` in [0, 1], averaged over alpha = 0.05..0.95 (TrackEval's HOTA)."""
    alphas = np.arange(0.05, 0.99, 0.05)
    g, p = _by_frame(gt), _by_frame(pred)
    gt_ids = {i: k for k, i in enumerate(sorted({r.track_id for r in gt}))}
    pr_ids = {i: k for k, i in enumerate(sorted({r.track_id for r in pred}))}
    frames = sorted(set(g) | set(p))
    empty = (np.zeros(0, int), np.zeros((0, 4)))
    per_frame = []
    potential = np.zeros((len(gt_ids), len(pr_ids)))
    gt_count, pr_count = np.zeros((len(gt_ids), 1)), np.zeros((1, len(pr_ids)))
    for f in frames:
        (gi, gb), (pi, pb) = g.get(f, empty), p.get(f, empty)
        gi, pi = np.array([gt_ids[i] for i in gi], int), np.array([pr_ids[i] for i in pi], int)
        sim = _box_iou_xywh(gb, pb)
        per_frame.append((gi, pi, sim))
        denom = sim.sum(0)[None, :] + sim.sum(1)[:, None] - sim
        potential[gi[:, None], pi[None, :]] += np.where(denom > _EPS, sim / np.maximum(denom, _EPS), 0.0)
        gt_count[gi] += 1
        pr_count[0, pi] += 1
    align = potential / np.maximum(gt_count + pr_count - potential, _EPS)
    tp, fn, fp, loc = (np.zeros(len(alphas)) for _ in range(4))
    matches = np.zeros((len(alphas),) + potential.shape)
    linear_sum_assignment = require("scipy.optimize").linear_sum_assignment
    for gi, pi, sim in per_frame:
        if len(gi) == 0 or len(pi) == 0:
            fn += len(gi)
            fp += len(pi)
            continue
        rows, cols = linear_sum_assignment(-(align[gi[:, None], pi[None, :]] * sim))
        for a, alpha in enumerate(alphas):
            ok = sim[rows, cols] >= alpha - _EPS
            r, c = rows[ok], cols[ok]
            tp[a] += len(r)
            fn[a] += len(gi) - len(r)
            fp[a] += len(pi) - len(r)
            loc[a] += sim[r, c].sum()
            matches[a][gi[r], pi[c]] += 1
    assa = np.array([np.sum(m * (m / np.maximum(1, gt_count + pr_count - m))) / max(1.0, t) for m, t in zip(matches, tp)])
    deta = tp / np.maximum(1.0, tp + fn + fp)
    loca = np.maximum(_EPS, loc) / np.maximum(_EPS, tp)
    return {"hota": float(np.mean(np.sqrt(deta * assa))), "deta": float(deta.mean()), "assa": float(assa.mean()),
            "loca": float(loca.mean())}


def _frame_boxes(df, frame: int) -> tuple[list[int], np.ndarray]:
    if frame not in df.index.get_level_values(0):
        return [], np.zeros((0, 4))
    part = df.loc[frame]
    return [int(i) for i in part.index], part[["X", "Y", "Width", "Height"]].to_numpy(np.float64)


def _clear(gt_path: Path, pred_path: Path, iou: float) -> dict[str, float]:
    mm = require("motmetrics")
    gt = mm.io.loadtxt(str(gt_path), fmt="mot15-2D", min_confidence=-1)
    ts = mm.io.loadtxt(str(pred_path), fmt="mot15-2D", min_confidence=-1)
    # motmetrics' own compare_to_groundtruth calls np.asfarray (gone in numpy 2): the same per-frame
    # update with the IoU distance computed here (1 - IoU; NaN = may not match)
    acc = mm.MOTAccumulator(auto_id=False)
    frames = sorted(set(gt.index.get_level_values(0)) | set(ts.index.get_level_values(0)))
    for f in frames:
        (gi, gb), (pi, pb) = _frame_boxes(gt, f), _frame_boxes(ts, f)
        sim = _box_iou_xywh(gb, pb)
        acc.update(gi, pi, np.where(sim >= iou - 1e-12, 1.0 - sim, np.nan), frameid=int(f))
    summary = mm.metrics.create().compute(acc, metrics=list(CLEAR_METRICS), name="all")
    out = {k: float(summary[k].iloc[0]) for k in CLEAR_METRICS}
    out["motp"] = 1.0 - out["motp"] if np.isfinite(out["motp"]) else out["motp"]  # motmetrics gives the mean distance
    return out


def evaluate_tracks(gt: str | os.PathLike, pred: str | os.PathLike, *, iou: float = 0.5) -> dict[str, float]:
    """Metrics of predicted tracks ``pred`` against ground truth ``gt`` (both MOTChallenge text files)."""
    if not 0.0 < iou <= 1.0:
        raise UsageError(f"--iou must be in (0, 1], found {iou}")
    gt_path, pred_path = Path(gt), Path(pred)
    gt_rows, pred_rows = read_mot(gt_path), read_mot(pred_path)
    if not gt_rows:
        raise UsageError(f"{gt_path}: no ground-truth rows")
    return _clear(gt_path, pred_path, iou) | hota(gt_rows, pred_rows)


def count_errors(gt: dict, pred: dict) -> dict:
    """Per line of the ground truth ``counts.json``: ``{direction: {"gt", "pred", "error", "by_class":
    {class: {"gt", "pred", "error"}}}}`` (error = pred - gt) and ``"exact"``: every count equal."""
    out, exact = {}, True
    for name, g in gt.get("lines", {}).items():
        if name not in pred.get("lines", {}):
            raise UsageError(f"the predicted counts have no line {name!r} (they have {sorted(pred.get('lines', {}))})")
        p, res = pred["lines"][name], {}
        for d in ("in", "out"):
            classes = sorted(set(g[d]["by_class"]) | set(p[d]["by_class"]))
            by = {c: {"gt": g[d]["by_class"].get(c, 0), "pred": p[d]["by_class"].get(c, 0)} for c in classes}
            for v in by.values():
                v["error"] = v["pred"] - v["gt"]
            res[d] = {"gt": g[d]["total"], "pred": p[d]["total"], "error": p[d]["total"] - g[d]["total"], "by_class": by}
            exact &= res[d]["error"] == 0 and all(v["error"] == 0 for v in by.values())
        out[name] = res
    return {"lines": out, "exact": exact}
