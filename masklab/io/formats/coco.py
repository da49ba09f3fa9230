"""COCO results JSON for a whole run, loadable by ``pycocotools`` as is.

Two files: ``coco_results.json`` (the standard results list: ``image_id, category_id, bbox [x, y, w, h],
score, segmentation`` as compressed RLE) and ``coco_images.json`` (a COCO dataset with the images and
categories and no annotations), so that::

    from pycocotools.coco import COCO
    gt = COCO("coco_images.json"); dt = gt.loadRes("coco_results.json")
    dt.annToMask(dt.loadAnns(dt.getAnnIds(imgIds=[1]))[0])   # bool-like uint8 (H, W)

Image ids are 1..N in the run's image order; category ids are the model's class ids (COCO category
ids for the COCO models). pycocotools' ``loadRes`` cannot load an empty results list (no detections
in the whole run): that file is then ``[]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from masklab.io.atomic import atomic_write_json
from masklab.io.formats.common import NOT_CLASSES
from masklab.structures.instances import Instances

__all__ = ["coco_documents", "write_coco"]


def coco_documents(
    records: Sequence[dict[str, Any]], *, categories: Sequence[str] | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Per-image JSON records (``OutputWriter``'s) -> ``(images_dataset, results)``.

    ``categories``: the model's category names indexed by class id; default: the (class_id, label)
    pairs seen in the records.
    """
    images, results, seen = [], [], {}
    for image_id, rec in enumerate(records, start=1):
        h, w = int(rec["height"]), int(rec["width"])
        images.append({"id": image_id, "file_name": rec["image"], "width": w, "height": h})
        inst = Instances.from_dict(rec["instances"], (h, w))
        results.extend(inst.to_coco(image_id))
        for cid, lab in zip(inst.class_ids.tolist(), inst.labels):
            seen.setdefault(int(cid), lab)
    if categories is not None:
        cats = [{"id": i, "name": n} for i, n in enumerate(categories) if n not in NOT_CLASSES]
    else:
        cats = [{"id": i, "name": n} for i, n in sorted(seen.items())]
    dataset = {
        "info": {"description": "masklab predictions", "version": "1.0"},
        "images": images,
        "annotations": [],
        "categories": cats,
    }
    return dataset, results


def write_coco(out_dir: str | Path, records: Sequence[dict[str, Any]], *, categories: Sequence[str] | None = None) -> list[Path]:
    """Write ``coco_images.json`` and ``coco_results.json`` into ``out_dir``; returns both paths."""
    out = Path(out_dir)
    dataset, results = coco_documents(records, categories=categories)
    return [atomic_write_json(out / "coco_images.json", dataset), atomic_write_json(out / "coco_results.json", results)]
