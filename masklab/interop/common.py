"""What the interop modules share: a run folder read back as ``(image_name, Instances)`` pairs, the
class list of a set of items, and a COCO dataset whose annotations are predictions (CVAT's "COCO 1.0"
and FiftyOne's COCO detection dataset)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from masklab.errors import DatasetError
from masklab.structures.instances import Instances
from masklab.structures.masks import encode_rle
from masklab.structures.polygons import mask_to_polygons

__all__ = ["Item", "read_run", "item_classes", "coco_dataset"]

#: one image: its name or path (as the target tool should see it) and its objects
Item = tuple[str, Instances]


def read_run(run_dir: str | Path) -> list[Item]:
    """A finished ``masklab segment`` run folder -> ``[(image_name, Instances), ...]`` from its per-image
    JSON records (``<stem>.json``: ``image``, ``width``, ``height``, ``instances``), in file-name order."""
    run_dir = Path(run_dir)
    items = []
    for path in sorted(run_dir.glob("*.json")):
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if not (isinstance(rec, dict) and {"image", "width", "height", "instances"} <= rec.keys()):
            continue  # run.json, settings.json and other run-level files
        items.append((str(rec["image"]), Instances.from_dict(rec["instances"], (int(rec["height"]), int(rec["width"])))))
    if not items:
        raise DatasetError(f"{run_dir}: no per-image JSON records (is it the --out folder of a finished masklab segment run?)")
    return items


def item_classes(items: Sequence[Item], class_names: Sequence[str] | None) -> list[str]:
    """``class_names`` if given (every label must be in it), else the labels in order of first appearance."""
    seen = list(dict.fromkeys(lab for _, inst in items for lab in inst.labels))
    if class_names is None:
        return seen
    missing = [lab for lab in seen if lab not in class_names]
    if missing:
        raise ValueError(f"labels {missing} are not in class_names {list(class_names)}")
    return list(class_names)


def _polygon_or_rle(mask: np.ndarray, tolerance: float) -> tuple[Any, int]:
    """(COCO ``segmentation``, ``iscrowd``): polygons (x, y flattened, pixel indices) for an object
    without holes, else compressed RLE with ``iscrowd`` 1 (how CVAT reads and writes masks in COCO)."""
    parts = mask_to_polygons(mask, tolerance=tolerance)
    if parts and not any(p.holes for p in parts):
        return [[round(float(v), 2) for v in p.exterior.reshape(-1)] for p in parts], 0
    return encode_rle(mask[None])[0], 1


def coco_dataset(
    items: Sequence[Item],
    class_names: Sequence[str] | None = None,
    *,
    polygons: bool = True,
    tolerance: float = 0.0,
) -> dict[str, Any]:
    """A COCO dataset whose annotations are the items' objects, scores kept (``score`` and
    ``attributes.score``).

    ``polygons``: objects without holes as polygons (editable in CVAT), objects with holes as RLE with
    ``iscrowd`` 1; False: every object as compressed RLE (``iscrowd`` 0; exact, what FiftyOne reads).
    Image ids are 1..N in ``items`` order, category ids 1..K in ``class_names`` order.
    """
    names = item_classes(items, class_names)
    images, anns = [], []
    for image_id, (name, inst) in enumerate(items, start=1):
        h, w = inst.image_size
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
        dense = inst.dense()
        for k in range(len(inst)):
            mask = np.asarray(dense.masks[k], bool)
            seg, crowd = _polygon_or_rle(mask, tolerance) if polygons else (encode_rle(mask[None])[0], 0)
            x1, y1, x2, y2 = (float(v) for v in inst.boxes[k])
            score = round(float(inst.scores[k]), 6)
            anns.append({
                "id": len(anns) + 1, "image_id": image_id, "category_id": names.index(inst.labels[k]) + 1,
                "segmentation": seg, "area": int(mask.sum()),
                "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                "iscrowd": crowd, "score": score, "attributes": {"score": score, "occluded": False},
            })
    cats = [{"id": i + 1, "name": n, "supercategory": ""} for i, n in enumerate(names)]
    return {"info": {"description": "masklab predictions"}, "licenses": [], "images": images, "annotations": anns, "categories": cats}
