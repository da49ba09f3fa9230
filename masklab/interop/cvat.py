"""CVAT: "CVAT for images 1.1" XML and "COCO 1.0" export of predictions for pre-annotation, and reading
CVAT's XML export back.

XML (``annotations.xml``; upload it in CVAT with Actions > Upload annotations > "CVAT 1.1", into a task
whose images have the same names): one ``<image id name width height>`` per image; an object without
holes becomes one ``<polygon points="x1,y1;x2,y2;...">`` per part (pixel-index vertices), an object
with holes one ``<mask rle left top width height>``: CVAT's mask RLE is the run lengths of the
object's box crop (``left``..``left + width - 1``, ``top``..``top + height - 1``) in row-major order,
starting with a run of background (possibly 0). Shapes of one object share a ``group_id``; the score
is an ``<attribute name="score">`` and ``source="auto"``. Labels are declared under ``<meta>``; the
task's labels need a number attribute ``score`` (0..1) for CVAT to keep it (``scores=False`` leaves it out).

COCO 1.0 (``annotations/instances_default.json``, zipped with that path for upload): polygons, and RLE
with ``iscrowd`` 1 for objects with holes (what CVAT reads as masks); the score in ``attributes``.
CVAT's COCO export reads back with masklab's COCO reader (``masklab.data.readers``).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from masklab.errors import DatasetError
from masklab.interop.common import Item, coco_dataset, item_classes
from masklab.io.atomic import atomic_write_json, atomic_write_text
from masklab.io.formats.common import LabeledImage
from masklab.structures.instances import Instances
from masklab.structures.polygons import Polygon, mask_to_polygons, polygons_to_mask

__all__ = ["to_cvat_xml", "write_cvat_xml", "read_cvat_xml", "cvat_coco", "write_cvat_coco", "mask_to_cvat_rle"]


def mask_to_cvat_rle(mask: np.ndarray) -> tuple[list[int], int, int, int, int] | None:
    """bool (H, W) -> (run lengths, left, top, width, height) of its box crop; None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if not len(ys):
        return None
    left, top, right, bottom = int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
    flat = mask[top : bottom + 1, left : right + 1].reshape(-1)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [len(flat)]])
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs = [0, *runs]  # runs alternate background, object, ... starting with background
    return runs, left, top, right - left + 1, bottom - top + 1


def _cvat_rle_to_mask(runs: Sequence[int], left: int, top: int, width: int, height: int, size: tuple[int, int]) -> np.ndarray:
    flat = np.zeros(width * height, bool)
    pos = 0
    for i, n in enumerate(runs):
        if i % 2:
            flat[pos : pos + n] = True
        pos += n
    if pos != width * height:
        raise ValueError(f"the runs cover {pos} pixels, the {width} x {height} box has {width * height}")
    out = np.zeros(size, bool)
    crop = flat.reshape(height, width)
    h, w = size
    out[top : min(top + height, h), left : min(left + width, w)] = crop[: h - top, : w - left]
    return out


#: the label attribute that holds a score (CVAT's number attribute: values = min, max, step)
_SCORE_ATTRIBUTE = (("name", "score"), ("mutable", "False"), ("input_type", "number"), ("default_value", "0"),
                    ("values", "0\n1\n0.0001"))


def _shape(parent: ET.Element, tag: str, label: str, group: int, score: float | None, **attrs: str) -> None:
    el = ET.SubElement(parent, tag, {"label": label, "source": "auto", "occluded": "0", "z_order": "0",
                                      "group_id": str(group), **attrs})
    if score is not None:
        ET.SubElement(el, "attribute", {"name": "score"}).text = f"{score:.4f}"


def to_cvat_xml(items: Sequence[Item], class_names: Sequence[str] | None = None, *, tolerance: float = 0.0,
                scores: bool = True) -> str:
    """The "CVAT for images 1.1" XML text for ``items`` (see the module docstring).

    ``tolerance``: polygon simplification in pixels (0 = exact); ``scores``: write the score attribute.
    """
    names = item_classes(items, class_names)
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    labels = ET.SubElement(ET.SubElement(ET.SubElement(root, "meta"), "task"), "labels")
    for n in names:
        lab = ET.SubElement(labels, "label")
        ET.SubElement(lab, "name").text = n
        ET.SubElement(lab, "type").text = "any"
        attributes = ET.SubElement(lab, "attributes")
        if scores:
            attr = ET.SubElement(attributes, "attribute")
            for key, value in _SCORE_ATTRIBUTE:
                ET.SubElement(attr, key).text = value
    for image_id, (name, inst) in enumerate(items):
        h, w = inst.image_size
        img = ET.SubElement(root, "image", {"id": str(image_id), "name": name, "width": str(w), "height": str(h)})
        dense = inst.dense()
        for k in range(len(inst)):
            mask, label = np.asarray(dense.masks[k], bool), inst.labels[k]
            score = float(inst.scores[k]) if scores else None
            parts = mask_to_polygons(mask, tolerance=tolerance)
            if parts and not any(p.holes for p in parts):
                for p in parts:
                    pts = ";".join(f"{x:.2f},{y:.2f}" for x, y in p.exterior)
                    _shape(img, "polygon", label, k + 1, score, points=pts)
            elif (rle := mask_to_cvat_rle(mask)) is not None:
                runs, left, top, bw, bh = rle
                _shape(img, "mask", label, k + 1, score, rle=", ".join(map(str, runs)), left=str(left), top=str(top),
                       width=str(bw), height=str(bh))
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_cvat_xml(path: str | Path, items: Sequence[Item], class_names: Sequence[str] | None = None, *,
                   tolerance: float = 0.0, scores: bool = True) -> Path:
    """Write :func:`to_cvat_xml` to ``path`` (atomically)."""
    return atomic_write_text(path, to_cvat_xml(items, class_names, tolerance=tolerance, scores=scores))


def _image_objects(img: ET.Element, size: tuple[int, int], where: str) -> tuple[list[np.ndarray], list[str], list[float]]:
    """One ``<image>``'s polygons, masks, boxes -> masks (shapes of one ``group_id`` joined), labels, scores."""
    groups: dict[object, dict] = {}
    for s, el in enumerate(img):
        if el.tag not in ("polygon", "mask", "box"):
            continue  # points, polylines, tags: no area
        label = el.get("label") or ""
        group = el.get("group_id")
        key = (label, group) if group not in (None, "0") else (label, f"shape-{s}")
        try:
            if el.tag == "polygon":
                pts = np.array([[float(v) for v in p.split(",")] for p in el.get("points", "").split(";")], np.float64)
                m = polygons_to_mask([Polygon(pts)], size)
            elif el.tag == "mask":
                runs = [int(float(v)) for v in el.get("rle", "").split(",") if v.strip()]
                m = _cvat_rle_to_mask(runs, *(int(float(el.get(k, 0))) for k in ("left", "top", "width", "height")), size)
            else:
                x1, y1, x2, y2 = (float(el.get(k, 0)) for k in ("xtl", "ytl", "xbr", "ybr"))
                m = np.zeros(size, bool)
                m[int(round(y1)) : int(round(y2)), int(round(x1)) : int(round(x2))] = True
        except (ValueError, TypeError) as e:
            raise DatasetError(f"{where}: cannot read <{el.tag} label={label!r}> ({e})") from None
        score = next((float(a.text) for a in el.iter("attribute") if a.get("name") == "score" and a.text), 1.0)
        g = groups.setdefault(key, {"mask": np.zeros(size, bool), "score": score})
        g["mask"] |= m
    masks = [g["mask"] for g in groups.values()]
    return masks, [k[0] for k in groups], [g["score"] for g in groups.values()]


def read_cvat_xml(path: str | Path, *, images_dir: str | Path | None = None) -> list[LabeledImage]:
    """Read a "CVAT for images 1.1" XML export: one :class:`LabeledImage` per ``<image>``.

    Polygons, masks and boxes become masks (shapes sharing a non-zero ``group_id`` and label make one
    object); ``score`` attributes become scores (1.0 where absent); class names from ``<meta>`` labels
    (else order of first appearance), ``class_ids`` = 1 + index. ``image_path`` = ``images_dir`` (default:
    the XML's folder) / the image's ``name``.
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such CVAT XML file") from None
    except ET.ParseError as e:
        raise DatasetError(f"{path}: not valid XML ({e})") from None
    if root.tag != "annotations":
        raise DatasetError(f"{path}: expected a CVAT for images XML (<annotations> root), found <{root.tag}>")
    names = [el.text or "" for el in root.iterfind("./meta//labels/label/name")]
    folder = Path(images_dir) if images_dir is not None else path.parent
    out = []
    for img in root.iter("image"):
        try:
            name, size = img.get("name") or "", (int(img.get("height", "")), int(img.get("width", "")))
        except ValueError:
            raise DatasetError(f"{path}: <image> needs integer width and height, found {dict(img.attrib)}") from None
        masks, labels, scores = _image_objects(img, size, f"{path}: image {name!r}")
        names += [lab for lab in dict.fromkeys(labels) if lab not in names]
        inst = Instances.from_masks(np.stack(masks) if masks else np.zeros((0, *size), bool),
                                    class_ids=[names.index(lab) + 1 for lab in labels], labels=labels, scores=scores)
        out.append(LabeledImage(folder / name, inst, ()))
    return [LabeledImage(p, inst, tuple(names)) for p, inst, _ in out]


def cvat_coco(items: Sequence[Item], class_names: Sequence[str] | None = None, *, tolerance: float = 0.0) -> dict:
    """The "COCO 1.0" document CVAT imports: polygons, RLE with ``iscrowd`` 1 for objects with holes."""
    return coco_dataset(items, class_names, polygons=True, tolerance=tolerance)


def write_cvat_coco(out_dir: str | Path, items: Sequence[Item], class_names: Sequence[str] | None = None, *,
                    tolerance: float = 0.0) -> Path:
    """Write ``out_dir/annotations/instances_default.json`` (zip ``annotations/`` to upload as "COCO 1.0")."""
    return atomic_write_json(Path(out_dir) / "annotations" / "instances_default.json",
                             cvat_coco(items, class_names, tolerance=tolerance))
