"""Agreement with the reference case: instances matched one to one by class and mask IoU."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from masklab.structures.masks import encode_rle

__all__ = ["match_instances", "agreement"]


def match_instances(ref, cand, *, iou_thresh: float = 0.9) -> dict[str, float]:
    """Greedy one-to-one matching of ``ref`` to ``cand`` (two Instances of one image), reference
    instances by falling score: same class and mask IoU >= ``iou_thresh``. Returns ``matched`` (count),
    ``n_ref``, ``max_box_delta`` (px) and ``max_score_delta`` over matched pairs (0 when none)."""
    from pycocotools import mask as mask_utils  # start-up time: only matching needs it

    n_ref = len(ref)
    if n_ref == 0 or len(cand) == 0:
        return {"matched": 0, "n_ref": n_ref, "max_box_delta": 0.0, "max_score_delta": 0.0}
    iou = np.asarray(mask_utils.iou(
        [_bytes_rle(r) for r in encode_rle(ref.masks)],
        [_bytes_rle(r) for r in encode_rle(cand.masks)],
        [0] * len(cand),
    )).reshape(n_ref, len(cand))
    iou[ref.class_ids[:, None] != cand.class_ids[None, :]] = -1.0
    used = np.zeros(len(cand), bool)
    box_d, score_d, matched = 0.0, 0.0, 0
    for i in np.argsort(-ref.scores, kind="stable"):
        row = np.where(used, -1.0, iou[i])
        j = int(np.argmax(row))
        if row[j] >= iou_thresh:
            used[j] = True
            matched += 1
            box_d = max(box_d, float(np.abs(ref.boxes[i] - cand.boxes[j]).max()))
            score_d = max(score_d, float(abs(ref.scores[i] - cand.scores[j])))
    return {"matched": matched, "n_ref": n_ref, "max_box_delta": box_d, "max_score_delta": score_d}


def agreement(reference: Sequence, outputs: Sequence) -> dict[str, float]:
    """Over a list of images (one Instances each, same order): ``matched`` = share of all reference
    instances matched (1.0 when the reference found none), ``max_box_delta`` / ``max_score_delta`` =
    the largest deltas over every image's matched pairs."""
    stats = [match_instances(a, b) for a, b in zip(reference, outputs)]
    n_ref = sum(s["n_ref"] for s in stats)
    return {
        "matched": sum(s["matched"] for s in stats) / n_ref if n_ref else 1.0,
        "max_box_delta": max(s["max_box_delta"] for s in stats),
        "max_score_delta": max(s["max_score_delta"] for s in stats),
    }


def _bytes_rle(r: dict) -> dict:
    return {"size": r["size"], "counts": r["counts"].encode("ascii")}
