"""YOLO-seg labels: one ``.txt`` per image plus a ``classes.txt`` class list; writer and reader.

A line is ``class_index x1 y1 x2 y2 ...``: the class's 0-based index in ``classes.txt`` and the polygon's
vertices normalised by the image width and height (pixel index / W, / H, in [0, 1]). One line per object:
its parts and holes are joined into a single ring by zero-width bridges, as Ultralytics' own COCO
converter does, so filling the ring (``cv2.fillPoly``, as Ultralytics does) restores the holes.
YOLO-seg has one polygon per object (a format limit): an object in several parts becomes one ring whose
parts are joined by bridges; it fills to the same pixels, but a polygon editor shows one shape.
:func:`write_yolo` warns (:class:`JoinedPartsWarning`) when that happens.

:func:`yolo_data_yaml` is the dataset's ``data.yaml``. It has no ``path:`` key: Ultralytics resolves a
relative ``path`` against the *current directory*, while without one it uses the yaml's own folder, so
``yolo segment train data=/abs/DST/data.yaml`` works from any working directory.

The reader (:func:`read_yolo`, also a dataset reader for training) also accepts detection lines
``class cx cy w h`` (exactly four numbers) and turns them into box-shaped masks.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from masklab.errors import DatasetError
from masklab.io.atomic import atomic_write_text
from masklab.io.formats.common import LabeledImage
from masklab.structures.instances import Instances
from masklab.structures.polygons import join_rings, mask_to_polygons

__all__ = [
    "YoloLabel",
    "JoinedPartsWarning",
    "JOINED_PARTS_MESSAGE",
    "yolo_label",
    "yolo_lines",
    "write_yolo",
    "write_yolo_classes",
    "yolo_data_yaml",
    "read_yolo_classes",
    "read_yolo",
    "find_yolo_image",
]

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

JOINED_PARTS_MESSAGE = (
    "YOLO-seg holds one polygon per object: objects in several parts were each joined into one ring by "
    "zero-width bridges (filled, they give the same pixels; a polygon editor shows them as one shape)"
)


class JoinedPartsWarning(UserWarning):
    """An object with several separate parts was written as one joined YOLO-seg polygon."""


class YoloLabel(NamedTuple):
    """One image's YOLO-seg label: ``lines`` (one per object) and ``joined``, how many of those objects
    had several parts joined into one ring."""

    lines: list[str]
    joined: int


def yolo_label(instances: Instances, class_names: Sequence[str], *, tolerance: float = 0.0) -> YoloLabel:
    """One YOLO-seg line per instance (objects whose polygon is empty, e.g. 1-2 pixel dots, are skipped).

    ``class_names``: the class list (``classes.txt``); every label must be in it. ``tolerance``: polygon
    simplification in pixels (0 = exact contours).
    """
    index = {n: i for i, n in enumerate(class_names)}
    h, w = instances.image_size
    lines, joined = [], 0
    for k in range(len(instances)):
        label = instances.labels[k]
        if label not in index:
            raise ValueError(f"YOLO export: label {label!r} is not in the class list ({len(class_names)} classes)")
        parts = mask_to_polygons(instances.masks[k], tolerance=tolerance)
        ring = join_rings(parts)
        if len(ring) < 3:
            continue
        joined += len(parts) > 1
        xy = ring / np.array([w, h], np.float64)
        lines.append(" ".join([str(index[label]), *(f"{v:.6f}" for v in xy.reshape(-1))]))
    return YoloLabel(lines, joined)


def yolo_lines(instances: Instances, class_names: Sequence[str], *, tolerance: float = 0.0) -> list[str]:
    """The lines of :func:`yolo_label`."""
    return yolo_label(instances, class_names, tolerance=tolerance).lines


def write_yolo(txt_path: str | Path, instances: Instances, class_names: Sequence[str], *, tolerance: float = 0.0) -> Path:
    """Write the YOLO-seg label file for one image (an empty file when nothing was found).

    Warns with :class:`JoinedPartsWarning` (one message per process, by Python's default filter) when an
    object in several parts had to be joined into one polygon.
    """
    label = yolo_label(instances, class_names, tolerance=tolerance)
    if label.joined:
        warnings.warn(JOINED_PARTS_MESSAGE, JoinedPartsWarning, stacklevel=2)
    return atomic_write_text(txt_path, "".join(f"{ln}\n" for ln in label.lines))


def yolo_data_yaml(class_names: Sequence[str], *, train: str = "images/train", val: str | None = None) -> str:
    """The ``data.yaml`` text of a YOLO-seg dataset: ``train``/``val`` folders relative to the yaml's own
    folder and ``names``. No ``path:`` key (Ultralytics would resolve it against the current directory)."""
    names = "".join(f"  {i}: {json.dumps(n)}\n" for i, n in enumerate(class_names))  # JSON strings are YAML scalars
    return f"train: {train}\nval: {val or train}\nnames:\n{names}"


def write_yolo_classes(path: str | Path, class_names: Sequence[str]) -> Path:
    """``classes.txt``: one class name per line, line ``i`` = class index ``i``."""
    return atomic_write_text(path, "".join(f"{n}\n" for n in class_names))


def read_yolo_classes(path: str | Path) -> tuple[str, ...]:
    """Read a ``classes.txt`` (blank lines ignored)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such class list (expected one class name per line)")
    return tuple(ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip())


def find_yolo_image(label_path: str | Path) -> Path | None:
    """The image a label file describes, by the usual layouts: ``labels/x.txt`` -> ``images/x.<ext>``, or
    ``x.<ext>`` next to the label. None if there is none."""
    label_path = Path(label_path)
    folders = [label_path.parent]
    parts = list(label_path.parent.parts)
    if "labels" in parts:
        i = len(parts) - 1 - parts[::-1].index("labels")
        folders.insert(0, Path(*parts[:i], "images", *parts[i + 1 :]))
    for folder in folders:
        for ext in _IMAGE_SUFFIXES:
            for cand in (folder / f"{label_path.stem}{ext}", folder / f"{label_path.stem}{ext.upper()}"):
                if cand.is_file():
                    return cand
    return None


def read_yolo(
    label_path: str | Path,
    *,
    class_names: Sequence[str] | str | Path,
    image_path: str | Path | None = None,
    image_size: tuple[int, int] | None = None,
) -> LabeledImage:
    """Read one YOLO-seg label file as ground truth.

    Args:
        label_path: the ``.txt`` file.
        class_names: the class list, or the path of ``classes.txt``.
        image_path: the image; default: found by :func:`find_yolo_image`.
        image_size: ``(H, W)`` in pixels; default: read from the image's header.

    Returns:
        :class:`~masklab.io.formats.common.LabeledImage` with :class:`Instances` (bool masks (N, H, W),
        tight xyxy boxes, scores 1.0, ``class_ids`` = 1 + the line's class index) and the class names.
    """
    import cv2

    label_path = Path(label_path)
    names = read_yolo_classes(class_names) if isinstance(class_names, (str, Path)) else tuple(class_names)
    image = Path(image_path) if image_path is not None else find_yolo_image(label_path)
    if image_size is None:
        if image is None or not image.is_file():
            raise DatasetError(f"{label_path}: no image found to take the size from; pass image_path= or image_size=")
        from PIL import Image

        with Image.open(image) as im:
            w0, h0 = im.size
        image_size = (h0, w0)
    h, w = (int(v) for v in image_size)
    if not label_path.is_file():
        raise DatasetError(f"{label_path}: no such YOLO label file")
    masks, cls = [], []
    for n, line in enumerate(label_path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{label_path}:{n}"
        try:
            values = [float(v) for v in line.split()]
        except ValueError:
            raise DatasetError(f"{where}: expected numbers 'class x1 y1 x2 y2 ...', found {line[:60]!r}") from None
        c = int(values[0])
        if c != values[0] or not 0 <= c < len(names):
            raise DatasetError(f"{where}: class index {values[0]} is not in 0..{len(names) - 1} ({len(names)} classes)")
        coords = np.asarray(values[1:], np.float64)
        if len(coords) % 2 or (len(coords) != 4 and len(coords) < 6):
            raise DatasetError(f"{where}: expected 'class cx cy w h' or at least 3 x y pairs, found {len(coords)} numbers")
        m = np.zeros((h, w), np.uint8)
        if len(coords) == 4:
            cx, cy, bw, bh = coords * np.array([w, h, w, h])
            cv2.rectangle(m, (int(round(cx - bw / 2)), int(round(cy - bh / 2))), (int(round(cx + bw / 2)) - 1, int(round(cy + bh / 2)) - 1), 1, -1)
        else:
            pts = np.round(coords.reshape(-1, 2) * np.array([w, h])).astype(np.int32)
            cv2.fillPoly(m, [pts.reshape(-1, 1, 2)], 1)
        masks.append(m.astype(bool))
        cls.append(c)
    inst = Instances.from_masks(
        np.stack(masks) if masks else np.zeros((0, h, w), bool),
        class_ids=[c + 1 for c in cls],
        labels=[names[c] for c in cls],
    )
    return LabeledImage(image if image is not None else label_path.with_suffix(""), inst, names)
