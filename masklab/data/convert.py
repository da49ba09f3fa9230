"""``masklab convert SRC DST --to FORMAT``: any readable dataset into COCO, YOLO-seg or LabelMe, and a
dataset or a finished ``masklab segment`` run folder (its predictions) into files for annotation tools.

The source is read with the dataset readers (:mod:`masklab.data.readers`) into
:class:`~masklab.data.coco.CocoGroundTruth`; the targets are written with the format writers of
:mod:`masklab.io.formats` and image files are copied next to them:

- ``coco``: ``DST/annotations.json`` (masks as compressed RLE) + ``DST/images/``;
- ``yolo``: ``DST/data.yaml`` (``names``, ``train`` and ``val`` both ``images/train``, no ``path:`` so
  Ultralytics finds the folders from any working directory), ``DST/classes.txt``, ``DST/images/train/`` +
  ``DST/labels/train/*.txt`` (polygons; holes and separate parts joined by zero-width bridges, counted in
  the notes: YOLO-seg has one polygon per object);
- ``labelme``: ``DST/<image>.json`` next to a copy of each image (objects with holes as ``mask`` shapes).

For annotation tools (:data:`TOOL_TARGETS`, :mod:`masklab.interop`; SRC may be a run folder, whose
per-image JSON records give predictions with scores, or any dataset), no images are copied:

- ``cvat``: ``DST/annotations.xml`` ("CVAT for images 1.1": polygons, masks for objects with holes);
- ``cvat-coco``: ``DST/annotations/instances_default.json`` ("COCO 1.0");
- ``labelstudio``: ``DST/labelstudio_tasks.json`` (brush RLE pre-annotations; ``--labelstudio-kind
  polygon`` for polygons) + ``DST/labelstudio_config.xml``; ``--image-url-prefix`` goes before each
  image file name;
- ``fiftyone``: ``DST/labels.json`` (a COCO detection dataset with masks and scores).

CVAT and Label Studio see each image by its file name; FiftyOne by its path as the run recorded it.

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

__all__ = ["ConvertResult", "convert_dataset", "export_for_tool", "TARGETS", "TOOL_TARGETS"]

#: targets for annotation and dataset tools (no images copied; SRC may be a run folder)
TOOL_TARGETS = ("cvat", "cvat-coco", "labelstudio", "fiftyone")
TARGETS = ("coco", "yolo", "labelme", *TOOL_TARGETS)


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
    if to in TOOL_TARGETS:
        return export_for_tool(src, dst, to=to, format=format, polygon_tolerance=polygon_tolerance)
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


def _tool_items(src: Path, format: str | None) -> tuple[list, list[str] | None, str]:
    """``(items, class names or None, what)``: a run folder's predictions or a dataset's annotations."""
    from masklab.interop import read_run

    if src.is_dir() and (src / "run.json").is_file() and format is None:
        return read_run(src), None, "predictions"
    gt = to_ground_truth(read_dataset(src, format=format))
    items = [(str(gt.image_path(i)), gt.instances(i)) for i in gt.images]
    return items, list(gt.category_names), "annotations"


def export_for_tool(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    to: str,
    format: str | None = None,
    polygon_tolerance: float = 0.0,
    labelstudio_kind: str = "brush",
    image_url_prefix: str = "",
) -> ConvertResult:
    """Write ``src`` (a run folder with ``run.json``, or a dataset) for the tool ``to`` (:data:`TOOL_TARGETS`)."""
    from masklab import interop

    if to not in TOOL_TARGETS:
        raise UsageError(f"--to must be one of {', '.join(TOOL_TARGETS)} here, found {to!r}")
    src, dst = Path(src), Path(dst)
    if dst.exists() and any(dst.iterdir()):
        raise UsageError(f"{dst} is not empty: convert writes into a new or empty folder")
    items, names, what = _tool_items(src, format)
    by_name = [(Path(n).name, inst) for n, inst in items]
    if to == "cvat":
        out = interop.write_cvat_xml(dst / "annotations.xml", by_name, names, tolerance=polygon_tolerance)
    elif to == "cvat-coco":
        out = interop.write_cvat_coco(dst, by_name, names, tolerance=polygon_tolerance)
    elif to == "labelstudio":
        out = interop.write_labelstudio(dst, by_name, names, kind=labelstudio_kind, image_url_prefix=image_url_prefix,
                                        tolerance=polygon_tolerance)[0]
    else:
        out = interop.write_fiftyone_dataset(dst, items, names)
    n = sum(len(inst) for _, inst in items)
    return ConvertResult(out, len(items), n, [f"wrote the {what} of {len(items)} images for {to}"])
