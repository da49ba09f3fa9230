"""``masklab convert SRC DST --to coco|yolo|labelme``: any readable dataset into COCO, YOLO-seg or LabelMe.

The source is read with the dataset readers (:mod:`masklab.data.readers`) into
:class:`~masklab.data.coco.CocoGroundTruth`; the targets are written with the format writers of
:mod:`masklab.io.formats` and image files are copied next to them:

- ``coco``: ``DST/annotations.json`` (masks as compressed RLE) + ``DST/images/``;
- ``yolo``: ``DST/data.yaml`` (``names``, ``train`` and ``val`` both ``images/train``, no ``path:`` so
  Ultralytics finds the folders from any working directory), ``DST/classes.txt``, ``DST/images/train/`` +
  ``DST/labels/train/*.txt`` (polygons; holes and separate parts joined by zero-width bridges, counted in
  the notes: YOLO-seg has one polygon per object);
- ``labelme``: ``DST/<image>.json`` next to a copy of each image (objects with holes as ``mask`` shapes).

Polygons are exact by default (``polygon_tolerance=0``: filling them gives the source masks back); a
tolerance ``t`` > 0 simplifies them, moving the boundary by at most ``t`` pixels.
YOLO and LabelMe have no crowd regions: crowd annotations become ordinary objects (counted in the notes).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from masklab.data.dataset import to_ground_truth
from masklab.data.readers import read_dataset
from masklab.errors import UsageError
from masklab.io.atomic import atomic_write_json, atomic_write_text

__all__ = ["ConvertResult", "convert_dataset", "TARGETS"]

TARGETS = ("coco", "yolo", "labelme")


@dataclass
class ConvertResult:
    """``path``: the written dataset (what ``masklab train --data`` takes); counts and notes."""

    path: Path
    images: int
    instances: int
    notes: list[str] = field(default_factory=list)


def _unique_names(gt) -> dict[int, str]:
    """A file name per image id, unique within the target folder (same-named files from different
    source folders get their image id prefixed)."""
    names: dict[int, str] = {}
    used: set[str] = set()
    for image_id, img in gt.images.items():
        name = Path(img.file_name).name
        if name in used:
            name = f"{image_id}_{name}"
        used.add(name)
        names[image_id] = name
    return names


def convert_dataset(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    to: str,
    format: str | None = None,
    polygon_tolerance: float = 0.0,
) -> ConvertResult:
    """Convert the dataset at ``src`` into ``dst`` (a folder, created; must be empty or absent).

    ``polygon_tolerance``: polygon simplification in pixels for YOLO and LabelMe (0 = exact).
    """
    from masklab.structures.instances import Instances

    if to not in TARGETS:
        raise UsageError(f"--to must be one of {', '.join(TARGETS)}, found {to!r}")
    if polygon_tolerance < 0:
        raise UsageError(f"--polygon-tolerance must be >= 0 pixels (0 = exact), found {polygon_tolerance}")
    dst = Path(dst)
    if dst.exists() and any(dst.iterdir()):
        raise UsageError(f"{dst} is not empty: convert writes into a new or empty folder")
    gt = to_ground_truth(read_dataset(src, format=format))
    names = _unique_names(gt)
    class_names = list(gt.category_names)
    notes: list[str] = []
    n_inst = 0
    n_crowd = 0
    n_joined = 0
    coco_images, coco_anns = [], []
    for image_id, img in gt.images.items():
        src_path = gt.image_path(image_id)
        inst = gt.instances(image_id)
        n_crowd += int(inst.extra["iscrowd"].sum())
        n_inst += len(inst)
        if to == "coco":
            target = dst / "images" / names[image_id]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src_path, target)
            coco_images.append({"id": image_id, "file_name": f"images/{names[image_id]}", "height": img.height, "width": img.width})
            for a in gt.annotations(image_id):
                seg = a["segmentation"]
                coco_anns.append({k: a[k] for k in ("id", "image_id", "category_id", "bbox", "area", "iscrowd")} | {"segmentation": seg})
        elif to == "yolo":
            target = dst / "images" / "train" / names[image_id]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src_path, target)
            from masklab.io.formats.yolo import yolo_label

            plain = Instances(boxes=inst.boxes, masks=inst.masks, scores=inst.scores, class_ids=inst.class_ids,
                              labels=inst.labels, image_size=inst.image_size)
            label = yolo_label(plain, class_names, tolerance=polygon_tolerance)
            n_joined += label.joined
            txt = dst / "labels" / "train" / (Path(names[image_id]).stem + ".txt")
            atomic_write_text(txt, "".join(f"{ln}\n" for ln in label.lines))
        else:
            from masklab.io.formats.labelme import write_labelme

            target = dst / names[image_id]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src_path, target)
            write_labelme(target.with_suffix(".json"), inst, image_path=target, tolerance=polygon_tolerance)
    if to == "coco":
        cats = [{"id": cid, "name": name} for cid, name in gt.categories.items()]
        out = atomic_write_json(dst / "annotations.json", {"images": coco_images, "annotations": coco_anns, "categories": cats})
    elif to == "yolo":
        from masklab.io.formats.yolo import JOINED_PARTS_MESSAGE, write_yolo_classes, yolo_data_yaml

        write_yolo_classes(dst / "classes.txt", class_names)
        out = atomic_write_text(dst / "data.yaml", yolo_data_yaml(class_names, train="images/train"))
        if n_joined:
            notes.append(f"{n_joined} objects: {JOINED_PARTS_MESSAGE}")
    else:
        out = dst
    if n_crowd and to != "coco":
        notes.append(f"{n_crowd} crowd annotations became ordinary objects ({to} has no crowd regions)")
    return ConvertResult(out, len(gt.images), n_inst, notes)
