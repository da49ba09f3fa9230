"""Boundary AP (masklab.evaluation.boundary) against faster-coco-eval's ``iouType="boundary"``."""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from masklab.evaluation.boundary import mask_boundary
from masklab.evaluation.coco_metrics import STAT_NAMES, run_cocoeval

H, W = 96, 128


def _rle(mask: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in r["size"]], "counts": r["counts"].decode("ascii")}


def _fixture(seed: int = 0):
    """Two images, two classes: objects with holes, multi-part objects, a crowd region; noisy detections."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W]
    anns, dets = [], []

    def add(image_id, cat, mask, crowd=0):
        anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat, "segmentation": _rle(mask),
                     "area": float(mask.sum()), "bbox": list(mask_utils.toBbox(_rle(mask) | {"counts": _rle(mask)["counts"].encode()})),
                     "iscrowd": crowd})

    for image_id in (1, 2):
        ring = ((xx - 40) ** 2 + (yy - 40) ** 2 < 25**2) & ((xx - 40) ** 2 + (yy - 40) ** 2 >= 10**2)  # a hole
        two = ((xx > 80) & (xx < 100) & (yy > 10) & (yy < 30)) | ((xx > 85) & (xx < 120) & (yy > 50) & (yy < 70))
        crowd = (xx > 5) & (xx < 30) & (yy > 70) & (yy < 92)
        add(image_id, 1, ring)
        add(image_id, 2, two)
        add(image_id, 1, crowd, crowd=1)
        add(image_id, 2, (xx > 40) & (xx < 70) & (yy > 75) & (yy < 90))
        for a in [a for a in anns if a["image_id"] == image_id]:
            m = mask_utils.decode(a["segmentation"] | {"counts": a["segmentation"]["counts"].encode()}).astype(bool)
            for _ in range(2):  # a jittered copy: shifted, a few pixels flipped near the outline
                dm = np.roll(m, (int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), axis=(0, 1))
                near = mask_boundary(m, dilation_ratio=0.01).astype(bool)
                dm ^= near & (rng.random(m.shape) < 0.1)
                cat = a["category_id"] if rng.random() > 0.15 else 3 - a["category_id"]
                dets.append({"image_id": image_id, "category_id": cat, "segmentation": _rle(dm),
                             "score": float(rng.random())})
        fp = (xx > 100) & (yy > 75)
        dets.append({"image_id": image_id, "category_id": 1, "segmentation": _rle(fp), "score": 0.9})
    gt = {"images": [{"id": i, "height": H, "width": W, "file_name": f"{i}.png"} for i in (1, 2)],
          "categories": [{"id": 1, "name": "ring"}, {"id": 2, "name": "parts"}], "annotations": anns}
    return gt, dets


def _reference(gt: dict, dets: list[dict]):
    fce = pytest.importorskip("faster_coco_eval")
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = fce.COCO(copy.deepcopy(gt))
        coco_dt = coco_gt.loadRes(copy.deepcopy(dets))
        ev = fce.COCOeval_faster(coco_gt, coco_dt, "boundary")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def _ours(gt: dict, dets: list[dict], iou_type: str):
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
    return run_cocoeval(coco_gt, copy.deepcopy(dets), iou_type)


def test_boundary_ap_equals_faster_coco_eval():
    gt, dets = _fixture()
    ref = _reference(gt, dets)
    ours = _ours(gt, dets, "boundary")
    ref_stats = dict(zip(STAT_NAMES, np.asarray(ref.stats)[: len(STAT_NAMES)]))
    for name in STAT_NAMES:
        expected = None if ref_stats[name] == -1 else float(ref_stats[name])
        if expected is None:
            assert ours.stats[name] is None, name
        else:
            assert ours.stats[name] == pytest.approx(expected, abs=1e-6), name
    ref_prec = np.asarray(ref.eval["precision"])[:, :, :, 0, -1]
    np.testing.assert_allclose(ours.precision, ref_prec, atol=1e-6)
    assert 0 < ours.stats["AP"] < 1  # the fixture is neither perfect nor empty


def test_boundary_ap_is_stricter_than_mask_ap_on_shifted_masks():
    gt, dets = _fixture()
    segm, boundary = _ours(gt, dets, "segm"), _ours(gt, dets, "boundary")
    assert boundary.stats["AP"] < segm.stats["AP"]


def test_mask_boundary_counts_the_image_border_and_holes():
    m = np.zeros((50, 50), bool)
    m[:, :25] = True  # touches the image border on three sides
    m[20:30, 5:15] = False  # a hole
    b = mask_boundary(m, dilation_ratio=0.02)  # d = round(0.02 * 70.7) = 1
    assert b[0, 10] == 1 and b[25, 0] == 1  # border pixels are boundary
    assert b[19, 10] == 1 and b[25, 24] == 1  # next to the hole and the right edge
    assert b[10, 10] == 0 and not b[:, 25:].any()  # deep inside, and outside the mask
