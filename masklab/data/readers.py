"""Dataset readers: every supported layout becomes one COCO dict, auto-detected from the path.

Formats (see :func:`detect_format`):

- ``coco``: a COCO JSON file (or a folder holding ``annotations.json``/exactly one COCO JSON). Read by
  :class:`masklab.data.coco.CocoGroundTruth` (polygons, RLE, crowd, non-contiguous category ids).
- ``via``: a VGG Image Annotator JSON (the balloon sample's ``via_region_data.json``), VIA 1 (``regions``
  a dict) or VIA 2 (a list); ``polygon``, ``rect``, ``circle``, ``ellipse`` regions; the class is the
  region attribute ``class``/``label``/``name``/``type`` if present, else the one class ``object``
  (override with ``class_attribute=``).
- ``labelme``: a folder of LabelMe JSON files (:func:`masklab.io.formats.labelme.read_labelme`).
- ``voc``: a Pascal VOC folder: ``SegmentationObject/*.png`` (instance index per pixel),
  ``SegmentationClass/*.png`` (class index per pixel; 255 = "difficult" border) and
  ``JPEGImages/``; ``Annotations/*.xml`` give the object order and names when present.
- ``yolo``: a YOLO-seg ``data.yaml`` (``names`` + ``train``/``val`` image folders) or a folder holding
  one; labels via :func:`masklab.io.formats.yolo.read_yolo`.
- ``labelstudio``: a Label Studio JSON export (a list of tasks with ``annotations``); images looked up by
  file name in ``images_dir`` (default: the JSON's folder). :func:`masklab.interop.read_labelstudio`.
- ``cvat``: a "CVAT for images 1.1" XML (``annotations.xml``, or a folder holding it); images by name
  relative to ``images_dir`` (default: the XML's folder). :func:`masklab.interop.read_cvat_xml`.

Every reader returns a :class:`DatasetSource`: a COCO dict whose ``file_name`` are absolute paths, so
training, evaluation, ``validate`` and ``convert`` all have one code path after reading.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from masklab.errors import DatasetError

__all__ = ["DatasetSource", "FORMATS", "detect_format", "read_dataset"]

FORMATS = ("coco", "via", "labelme", "voc", "yolo", "labelstudio", "cvat")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class DatasetSource:
    """What a reader found.

    Attributes:
        coco: a COCO dict (``images``, ``annotations``, ``categories``); image ``file_name`` relative to
            ``root`` (COCO) or absolute (the other formats).
        root: the folder ``file_name`` is resolved against.
        format: one of :data:`FORMATS`.
        source_name: file name used in messages (and the sibling-folder rule of COCO).
        problems: files or entries the reader could not take (``validate`` lists them; training refuses).
    """

    coco: dict
    root: Path
    format: str
    source_name: str
    problems: list[str] = field(default_factory=list)


# -- detection --------------------------------------------------------------------------------------
def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from None


def _json_kind(path: Path) -> str | None:
    try:
        data = _json(path)
    except DatasetError:
        return None
    if isinstance(data, dict) and "images" in data and "annotations" in data:
        return "coco"
    if isinstance(data, dict) and "shapes" in data and "imagePath" in data:
        return "labelme"
    if isinstance(data, dict) and "_via_img_metadata" in data:
        return "via"
    if isinstance(data, dict) and data and all(isinstance(v, dict) and "regions" in v for v in data.values()):
        return "via"
    if isinstance(data, list) and data and all(isinstance(t, dict) and "data" in t and "annotations" in t for t in data):
        return "labelstudio"
    return None


def detect_format(path: str | os.PathLike) -> str:
    """Which of :data:`FORMATS` ``path`` holds; :class:`DatasetError` saying what was looked for otherwise."""
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"{p}: no such file or folder")
    if p.is_file():
        if p.suffix.lower() in (".yaml", ".yml"):
            return "yolo"
        if p.suffix.lower() == ".json":
            kind = _json_kind(p)
            if kind is not None:
                return kind
        if p.suffix.lower() == ".xml":
            return "cvat"
        raise DatasetError(f"{p}: not a COCO, VIA, LabelMe or Label Studio JSON, a CVAT XML, nor a YOLO data.yaml")
    if (p / "data.yaml").is_file() or (p / "data.yml").is_file():
        return "yolo"
    if (p / "SegmentationObject").is_dir():
        return "voc"
    if (p / "via_region_data.json").is_file():
        return "via"
    if (p / "annotations.xml").is_file():
        return "cvat"
    jsons = sorted(p.glob("*.json"))
    kinds = {j: _json_kind(j) for j in jsons}
    if (p / "annotations.json").is_file() and kinds.get(p / "annotations.json") == "coco":
        return "coco"
    if any(k == "labelme" for k in kinds.values()):
        return "labelme"
    if sum(k == "coco" for k in kinds.values()) == 1:
        return "coco"
    if sum(k == "via" for k in kinds.values()) == 1:
        return "via"
    if sum(k == "labelstudio" for k in kinds.values()) == 1:
        return "labelstudio"
    raise DatasetError(
        f"{p}: found no dataset. Expected a COCO JSON (or a folder with annotations.json), a VIA JSON "
        "(via_region_data.json), a folder of LabelMe JSON files, a Pascal VOC folder (SegmentationObject/, "
        "SegmentationClass/, JPEGImages/), a YOLO data.yaml, a Label Studio JSON export or a CVAT annotations.xml"
    )


def read_dataset(path: str | os.PathLike, *, format: str | None = None, **options: Any) -> DatasetSource:
    """Read any supported dataset (``format`` auto-detected unless given) as a :class:`DatasetSource`."""
    fmt = format or detect_format(path)
    if fmt not in FORMATS:
        raise DatasetError(f"unknown dataset format {fmt!r}; known: {', '.join(FORMATS)}")
    reader = {"coco": _read_coco, "via": _read_via, "labelme": _read_labelme, "voc": _read_voc, "yolo": _read_yolo,
              "labelstudio": _read_tool_export, "cvat": _read_tool_export}[fmt]
    if fmt in ("labelstudio", "cvat"):
        options = {"fmt": fmt, **options}
    return reader(Path(path), **options)


# -- helpers ----------------------------------------------------------------------------------------
def _image_size(path: Path) -> tuple[int, int] | None:
    """(H, W) from the image header, None if the file is missing or unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
        return h, w
    except (OSError, ValueError):
        return None


def _mask_annotation(mask: np.ndarray, category_id: int, image_id: int, ann_id: int) -> dict:
    from masklab.structures.masks import encode_rle, masks_to_boxes

    rle = encode_rle(mask[None])[0]
    x1, y1, x2, y2 = (float(v) for v in masks_to_boxes(mask[None])[0])
    return {
        "id": ann_id, "image_id": image_id, "category_id": category_id, "segmentation": rle,
        "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float(mask.sum()), "iscrowd": 0,
    }


class _Builder:
    """Accumulates a COCO dict with absolute file names and categories in order of first appearance."""

    def __init__(self, class_names: list[str] | None = None) -> None:
        self.images: list[dict] = []
        self.annotations: list[dict] = []
        self.names: list[str] = list(class_names or [])
        self.problems: list[str] = []

    def category(self, name: str) -> int:
        if name not in self.names:
            self.names.append(name)
        return self.names.index(name) + 1

    def image(self, path: Path, size_hw: tuple[int, int]) -> int:
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "file_name": str(path.resolve()), "height": int(size_hw[0]), "width": int(size_hw[1])})
        return image_id

    def polygon(self, image_id: int, name: str, poly: list[float]) -> None:
        self.annotations.append({
            "id": len(self.annotations) + 1, "image_id": image_id, "category_id": self.category(name),
            "segmentation": [poly], "iscrowd": 0,
        })

    def mask(self, image_id: int, name: str, mask: np.ndarray) -> None:
        self.annotations.append(_mask_annotation(mask, self.category(name), image_id, len(self.annotations) + 1))

    def done(self, root: Path, fmt: str, source_name: str) -> DatasetSource:
        cats = [{"id": i + 1, "name": n} for i, n in enumerate(self.names)]
        doc = {"images": self.images, "annotations": self.annotations, "categories": cats}
        return DatasetSource(doc, root, fmt, source_name, self.problems)


# -- COCO -------------------------------------------------------------------------------------------
def _read_coco(path: Path) -> DatasetSource:
    if path.is_dir():
        cands = [path / "annotations.json"] if (path / "annotations.json").is_file() else [
            j for j in sorted(path.glob("*.json")) if _json_kind(j) == "coco"
        ]
        if len(cands) != 1:
            raise DatasetError(f"{path}: expected annotations.json or exactly one COCO JSON file, found {len(cands)}")
        path = cands[0]
    data = _json(path)
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a COCO JSON object, found {type(data).__name__}")
    return DatasetSource(data, path.parent, "coco", path.name)


# -- VIA --------------------------------------------------------------------------------------------
_VIA_CLASS_KEYS = ("class", "label", "name", "type", "category")


def _via_class(attrs: Any, class_attribute: str | None) -> str:
    if not isinstance(attrs, dict):
        return "object"
    keys = (class_attribute,) if class_attribute else _VIA_CLASS_KEYS
    for k in keys:
        v = attrs.get(k)
        if isinstance(v, dict):  # VIA 2 checkbox attributes: {"balloon": true}
            v = next((kk for kk, on in v.items() if on), None)
        if isinstance(v, str) and v.strip():
            return v.strip()
    return "object"


def _read_via(path: Path, *, class_attribute: str | None = None) -> DatasetSource:
    """VIA 1/2 project or export JSON. Images are found next to the JSON (the balloon layout)."""
    import cv2

    if path.is_dir():
        path = path / "via_region_data.json" if (path / "via_region_data.json").is_file() else next(
            j for j in sorted(path.glob("*.json")) if _json_kind(j) == "via"
        )
    data = _json(path)
    if isinstance(data, dict) and "_via_img_metadata" in data:
        data = data["_via_img_metadata"]
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a VIA JSON object of images, found {type(data).__name__}")
    b = _Builder()
    for key, entry in data.items():
        fname = entry.get("filename") if isinstance(entry, dict) else None
        if not isinstance(fname, str):
            b.problems.append(f"{path.name}: entry {key!r} has no 'filename'")
            continue
        img_path = path.parent / fname
        size = _image_size(img_path)
        if size is None:
            b.problems.append(f"{img_path}: image missing or unreadable (entry {key!r})")
            continue
        image_id = b.image(img_path, size)
        regions = entry.get("regions") or []
        if isinstance(regions, dict):  # VIA 1: {"0": region, "1": ...}
            regions = list(regions.values())
        for r, region in enumerate(regions):
            sa = region.get("shape_attributes") or {}
            name = _via_class(region.get("region_attributes"), class_attribute)
            kind = sa.get("name")
            where = f"{path.name}: {fname} region {r}"
            if kind in ("polygon", "polyline"):
                xs, ys = sa.get("all_points_x") or [], sa.get("all_points_y") or []
                if len(xs) != len(ys):
                    b.problems.append(f"{where}: {len(xs)} x but {len(ys)} y coordinates")
                    continue
                # Fewer than 3 points stays in the dict: validate and the COCO reader report it.
                b.polygon(image_id, name, [float(v) for xy in zip(xs, ys) for v in xy])
            elif kind in ("rect", "circle", "ellipse"):
                m = np.zeros(size, np.uint8)
                if kind == "rect":
                    x, y, w, h = (int(round(float(sa[k]))) for k in ("x", "y", "width", "height"))
                    m[max(y, 0) : y + h, max(x, 0) : x + w] = 1
                else:
                    cx, cy = int(round(float(sa["cx"]))), int(round(float(sa["cy"])))
                    rx = float(sa.get("r", sa.get("rx", 0)))
                    ry = float(sa.get("r", sa.get("ry", 0)))
                    cv2.ellipse(m, (cx, cy), (int(round(rx)), int(round(ry))), float(sa.get("theta", 0)) * 180 / np.pi, 0, 360, 1, -1)
                b.mask(image_id, name, m.astype(bool))
            else:
                b.problems.append(f"{where}: region shape {kind!r} has no area (skipped)")
    return b.done(path.parent, "via", path.name)


# -- LabelMe ----------------------------------------------------------------------------------------
def _read_labelme(path: Path) -> DatasetSource:
    from masklab.io.formats.labelme import read_labelme

    files = [path] if path.is_file() else sorted(j for j in path.rglob("*.json") if _json_kind(j) == "labelme")
    b = _Builder()
    for f in files:
        try:
            item = read_labelme(f)
        except DatasetError as e:
            b.problems.append(str(e))
            continue
        image_id = b.image(item.image_path, item.instances.image_size)
        for m, lab in zip(item.instances.masks, item.instances.labels):
            b.mask(image_id, lab, m)
    return b.done(path if path.is_dir() else path.parent, "labelme", path.name)


# -- Label Studio and CVAT exports ------------------------------------------------------------------
def _read_tool_export(path: Path, *, fmt: str, images_dir: str | os.PathLike | None = None) -> DatasetSource:
    from masklab.interop import read_cvat_xml, read_labelstudio

    if path.is_dir():
        cands = [path / "annotations.xml"] if fmt == "cvat" else [j for j in sorted(path.glob("*.json")) if _json_kind(j) == fmt]
        if len(cands) != 1 or not cands[0].is_file():
            raise DatasetError(f"{path}: expected exactly one {fmt} export in the folder, found {len(cands)}")
        path = cands[0]
    folder = Path(images_dir) if images_dir is not None else path.parent
    items = read_cvat_xml(path, images_dir=folder) if fmt == "cvat" else read_labelstudio(path, images_dir=folder)
    b = _Builder(list(items[0].class_names) if items else None)
    for item in items:
        image_id = b.image(item.image_path, item.instances.image_size)
        if not item.image_path.is_file():
            b.problems.append(f"{path}: image {item.image_path.name!r} not found in {folder} (pass images_dir= / --images)")
        for m, lab in zip(item.instances.masks, item.instances.labels):
            b.mask(image_id, lab, m)
    return b.done(path.parent, fmt, path.name)


# -- Pascal VOC -------------------------------------------------------------------------------------
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


def _read_png_index(path: Path) -> np.ndarray:
    """A palette/greyscale PNG as its raw index values, uint8 (H, W)."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in ("P", "L"):
            raise DatasetError(f"{path}: expected a palette or greyscale index PNG, found mode {im.mode}")
        return np.asarray(im, dtype=np.uint8).copy()


def _voc_xml_names(path: Path) -> list[str] | None:
    import xml.etree.ElementTree as ET

    if not path.is_file():
        return None
    try:
        root = ET.parse(path).getroot()  # noqa: S314 - local annotation files, no entity expansion in ElementTree
    except ET.ParseError as e:
        raise DatasetError(f"{path}: not valid XML ({e})") from None
    return [(o.findtext("name") or "").strip() for o in root.iter("object")]


def _read_voc(path: Path, *, class_names: tuple[str, ...] = VOC_CLASSES) -> DatasetSource:
    """One instance per index of ``SegmentationObject`` (0 background, 255 border); its class is the
    majority ``SegmentationClass`` index under it (index i -> ``class_names[i - 1]``), cross-checked with
    the XML's i-th object name when the XML exists."""
    b = _Builder()
    obj_dir, cls_dir = path / "SegmentationObject", path / "SegmentationClass"
    for obj_png in sorted(obj_dir.glob("*.png")):
        stem = obj_png.stem
        img_path = next((path / "JPEGImages" / f"{stem}{s}" for s in (".jpg", ".jpeg", ".png") if (path / "JPEGImages" / f"{stem}{s}").is_file()), path / "JPEGImages" / f"{stem}.jpg")
        try:
            obj = _read_png_index(obj_png)
            cls_png = cls_dir / f"{stem}.png"
            if not cls_png.is_file():
                raise DatasetError(f"{cls_png}: missing (each SegmentationObject PNG needs its SegmentationClass PNG)")
            cls = _read_png_index(cls_png)
            if cls.shape != obj.shape:
                raise DatasetError(f"{stem}: SegmentationClass is {cls.shape} but SegmentationObject is {obj.shape}")
            xml_names = _voc_xml_names(path / "Annotations" / f"{stem}.xml")
        except DatasetError as e:
            b.problems.append(str(e))
            continue
        image_id = b.image(img_path, obj.shape)
        for k in sorted(int(v) for v in np.unique(obj) if v not in (0, 255)):
            m = obj == k
            values, counts = np.unique(cls[m], return_counts=True)
            ok = (values != 0) & (values != 255)
            if not ok.any():
                b.problems.append(f"{stem}: object {k} has no class in SegmentationClass")
                continue
            ci = int(values[ok][np.argmax(counts[ok])])
            if not 1 <= ci <= len(class_names):
                b.problems.append(f"{stem}: object {k} has class index {ci}, outside 1..{len(class_names)}")
                continue
            name = class_names[ci - 1]
            if xml_names is not None and k <= len(xml_names) and xml_names[k - 1] and xml_names[k - 1] != name:
                b.problems.append(f"{stem}: object {k} is {name!r} in SegmentationClass but {xml_names[k - 1]!r} in the XML")
            b.mask(image_id, name, m)
    if not b.images and not b.problems:
        raise DatasetError(f"{obj_dir}: no PNG files")
    return b.done(path, "voc", path.name)


# -- YOLO-seg ---------------------------------------------------------------------------------------
def _yolo_names(doc: dict, where: Path) -> tuple[str, ...]:
    names = doc.get("names")
    if isinstance(names, dict):
        try:
            return tuple(str(names[k]) for k in sorted(names, key=int))
        except (TypeError, ValueError):
            raise DatasetError(f"{where}: 'names' keys must be class indices 0..N-1") from None
    if isinstance(names, list):
        return tuple(str(n) for n in names)
    raise DatasetError(f"{where}: expected 'names' (a list or an index->name mapping), found {type(names).__name__}")


def _read_yolo(path: Path, *, split: str = "train") -> DatasetSource:
    """``data.yaml``'s ``split`` image folder (``train`` by default; ``val`` for validation sets);
    label files by the ``images/`` -> ``labels/`` rule."""
    import yaml

    from masklab.io.formats.yolo import read_yolo

    yml = path if path.is_file() else (path / "data.yaml" if (path / "data.yaml").is_file() else path / "data.yml")
    try:
        doc = yaml.safe_load(yml.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise DatasetError(f"{yml}: not valid YAML ({e})") from None
    if not isinstance(doc, dict):
        raise DatasetError(f"{yml}: expected a mapping with 'names' and 'train'/'val'")
    names = _yolo_names(doc, yml)
    base = yml.parent / str(doc.get("path") or "")
    rel = doc.get(split)
    if rel is None:
        raise DatasetError(f"{yml}: no {split!r} entry (the image folder of that split)")
    img_dir = base / str(rel)
    if not img_dir.is_dir():
        raise DatasetError(f"{yml}: {split} folder {img_dir} does not exist")
    b = _Builder(list(names))
    for img in sorted(p for p in img_dir.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES):
        parts = list(img.relative_to(base).parts)
        if "images" in parts:
            i = len(parts) - 1 - parts[::-1].index("images")
            parts[i] = "labels"
        label = (base / Path(*parts)).with_suffix(".txt")
        size = _image_size(img)
        if size is None:
            b.problems.append(f"{img}: unreadable image")
            continue
        if not label.is_file():  # an image without a label file is a background image in YOLO
            b.image(img, size)
            continue
        try:
            item = read_yolo(label, class_names=names, image_path=img, image_size=size)
        except DatasetError as e:
            b.problems.append(str(e))
            continue
        image_id = b.image(img, size)
        for m, lab in zip(item.instances.masks, item.instances.labels):
            if m.any():
                b.mask(image_id, lab, m)
            else:
                b.problems.append(f"{label}: an object of class {lab!r} covers no pixel")
    return b.done(base, "yolo", yml.name)
