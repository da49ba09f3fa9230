"""LabelMe JSON, one file per image: write predictions to correct them in LabelMe, read annotations back.

Writing: an object without holes becomes one ``polygon`` shape per part; an object with holes becomes
one ``mask`` shape (LabelMe 5.5+: ``points`` = the inclusive box ``[[x1, y1], [x2, y2]]``, ``mask`` = a
base64 PNG of the object's pixels in that box), because a LabelMe polygon cannot have a hole and
LabelMe's own tools (``labelme.utils.shapes_to_label``) would paint it as object. All shapes of one
object share its ``group_id`` (the instance's index). Objects are written lowest score first: LabelMe
paints shapes in file order, later over earlier, so where objects overlap the higher score wins, as in
masklab's PNG label maps. The score goes in ``description``. Vertices are pixel indices ``[x, y]`` (see
:mod:`masklab.structures.polygons`). ``imagePath`` is relative to the JSON file, ``imageData`` is null
(LabelMe then opens the image from ``imagePath``).

Reading (:func:`read_labelme`, also a dataset reader for training): ``polygon``, ``rectangle``,
``circle`` and ``mask`` shapes become masks; shapes with the same ``label`` and non-null ``group_id``
make one object; ``line``, ``linestrip`` and ``point`` shapes have no area and are skipped. Objects come
out in ``group_id`` order (integers first: masklab's own files give back the original order), then
shapes without one in file order. Polygons flagged ``{"hole": true}`` (how earlier masklab versions
wrote holes) are cut out of the object.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from masklab.errors import DatasetError
from masklab.io.atomic import atomic_write_json
from masklab.io.formats.common import LabeledImage
from masklab.structures.instances import Instances
from masklab.structures.polygons import Polygon, mask_to_polygons, polygons_to_mask

__all__ = ["to_labelme", "write_labelme", "read_labelme", "LABELME_VERSION"]

LABELME_VERSION = "5.5.0"


def _mask_shape(mask: np.ndarray) -> tuple[list[list[float]], str] | None:
    """bool (H, W) -> (LabelMe ``points`` ``[[x1, y1], [x2, y2]]`` inclusive, base64 PNG of the crop)."""
    import base64
    import io

    from PIL import Image

    ys, xs = np.nonzero(mask)
    if not len(ys):
        return None
    x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
    buf = io.BytesIO()
    Image.fromarray(mask[y1 : y2 + 1, x1 : x2 + 1].astype(np.uint8)).save(buf, format="PNG")
    return [[float(x1), float(y1)], [float(x2), float(y2)]], base64.b64encode(buf.getvalue()).decode("ascii")


def _object_shapes(instances: Instances, k: int, tolerance: float) -> list[dict[str, Any]]:
    """The shapes of instance ``k``: a polygon per part, or one mask shape if any part has a hole."""
    common = {"label": instances.labels[k], "group_id": k, "description": f"score={float(instances.scores[k]):.4f}", "flags": {}}
    mask = np.asarray(instances.masks[k], bool)
    parts = mask_to_polygons(mask, tolerance=tolerance)
    if any(p.holes for p in parts):
        box_crop = _mask_shape(mask)
        return [{**common, "points": box_crop[0], "shape_type": "mask", "mask": box_crop[1]}] if box_crop else []
    return [
        {**common, "points": [[round(float(x), 2), round(float(y), 2)] for x, y in p.exterior], "shape_type": "polygon", "mask": None}
        for p in parts
    ]


def to_labelme(instances: Instances, *, image_path: str, tolerance: float = 0.0) -> dict[str, Any]:
    """The LabelMe document for one image; ``image_path`` as it should appear in ``imagePath``.

    ``tolerance``: polygon simplification in pixels (0 = exact contours; mask shapes are always exact).
    """
    h, w = instances.image_size
    shapes = []
    for k in np.argsort(np.asarray(instances.scores), kind="stable").tolist():  # lowest score first (painted under)
        shapes += _object_shapes(instances, k, tolerance)
    return {
        "version": LABELME_VERSION,
        "flags": {},
        "shapes": shapes,
        "imagePath": image_path,
        "imageData": None,
        "imageHeight": h,
        "imageWidth": w,
    }


def write_labelme(json_path: str | Path, instances: Instances, *, image_path: str | Path, tolerance: float = 0.0) -> Path:
    """Write the LabelMe JSON for ``instances`` to ``json_path``; ``imagePath`` is made relative to it."""
    json_path = Path(json_path)
    image_path = Path(image_path)
    try:
        rel = os.path.relpath(image_path.resolve(), json_path.parent.resolve())
    except ValueError:  # another drive on Windows
        rel = str(image_path)
    return atomic_write_json(json_path, to_labelme(instances, image_path=rel, tolerance=tolerance), indent=1)


def _points(shape: dict, where: str) -> np.ndarray:
    try:
        pts = np.asarray(shape["points"], np.float64).reshape(-1, 2)
    except (KeyError, TypeError, ValueError) as e:
        raise DatasetError(f"{where}: expected 'points' as a list of [x, y] pairs ({e})") from None
    return pts


def _shape_mask(shape: dict, size: tuple[int, int], where: str) -> np.ndarray | None:
    """One shape -> bool (H, W), or None for shapes without area."""
    import cv2

    h, w = size
    kind = shape.get("shape_type") or "polygon"
    if kind in ("line", "linestrip", "point", "points"):
        return None
    pts = _points(shape, where)
    m = np.zeros((h, w), np.uint8)
    if kind == "polygon":
        if len(pts) < 3:
            raise DatasetError(f"{where}: a polygon needs at least 3 points, found {len(pts)}")
        cv2.fillPoly(m, [np.round(pts).astype(np.int32).reshape(-1, 1, 2)], 1)
    elif kind == "rectangle":
        (x1, y1), (x2, y2) = np.sort(pts[:2], axis=0)
        cv2.rectangle(m, (int(round(x1)), int(round(y1))), (int(round(x2)), int(round(y2))), 1, -1)
    elif kind == "circle":
        (cx, cy), (px, py) = pts[:2]
        cv2.circle(m, (int(round(cx)), int(round(cy))), int(round(np.hypot(px - cx, py - cy))), 1, -1)
    elif kind == "mask":
        import base64
        import io

        from PIL import Image

        try:
            crop = np.asarray(Image.open(io.BytesIO(base64.b64decode(shape["mask"])))).astype(bool)
        except Exception as e:  # noqa: BLE001 - any decode failure is a malformed file
            raise DatasetError(f"{where}: cannot decode the base64 PNG 'mask' ({e})") from None
        x1, y1 = (int(round(v)) for v in pts[0])
        ch, cw = crop.shape[:2]
        region = m[max(y1, 0) : y1 + ch, max(x1, 0) : x1 + cw]
        region[:] = crop[max(-y1, 0) : max(-y1, 0) + region.shape[0], max(-x1, 0) : max(-x1, 0) + region.shape[1]]
    else:
        raise DatasetError(f"{where}: unknown shape_type {kind!r}")
    return m.astype(bool)


def read_labelme(json_path: str | Path, *, class_names: Sequence[str] | None = None) -> LabeledImage:
    """Read one LabelMe JSON file as ground truth.

    Args:
        json_path: the LabelMe file.
        class_names: the dataset's classes (no background); a label outside them is a
            :class:`~masklab.errors.DatasetError`. Default: the labels in order of first appearance.

    Returns:
        :class:`~masklab.io.formats.common.LabeledImage`: the image path (``imagePath`` resolved against
        the JSON's folder), :class:`Instances` (bool masks (N, H, W), tight xyxy boxes, scores 1.0,
        ``class_ids`` = 1 + index in ``class_names``) and the class names.
    """
    json_path = Path(json_path)
    try:
        doc = json.loads(json_path.read_text(encoding="utf-8"))
        size = (int(doc["imageHeight"]), int(doc["imageWidth"]))
        shapes = list(doc.get("shapes") or [])
    except FileNotFoundError:
        raise DatasetError(f"{json_path}: no such LabelMe file") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise DatasetError(f"{json_path}: not a LabelMe JSON file with imageHeight/imageWidth/shapes ({e})") from None
    names = list(class_names) if class_names is not None else []
    groups: dict[Any, dict[str, list]] = {}
    for s, shape in sorted(enumerate(shapes), key=lambda item: _object_order(item[1])):
        where = f"{json_path}: shape {s}"
        label = str(shape.get("label", ""))
        if not label:
            raise DatasetError(f"{where}: missing 'label'")
        if class_names is None and label not in names:
            names.append(label)
        elif label not in names:
            raise DatasetError(f"{where}: label {label!r} is not one of the classes {names}")
        gid = shape.get("group_id")
        key = (label, gid) if gid is not None else (label, f"shape-{s}")
        is_hole = bool((shape.get("flags") or {}).get("hole"))
        g = groups.setdefault(key, {"parts": [], "holes": [], "masks": []})
        if (shape.get("shape_type") or "polygon") == "polygon":
            pts = _points(shape, where)
            if len(pts) < 3:
                raise DatasetError(f"{where}: a polygon needs at least 3 points, found {len(pts)}")
            g["holes" if is_hole else "parts"].append(pts)
        else:
            m = _shape_mask(shape, size, where)
            if m is not None:
                g["masks"].append(m)
    masks, labels = [], []
    for (label, _), g in groups.items():
        m = polygons_to_mask(_attach_holes(g["parts"], g["holes"]), size)
        for extra in g["masks"]:
            m |= extra
        if m.any():
            masks.append(m)
            labels.append(label)
    h, w = size
    inst = Instances.from_masks(
        np.stack(masks) if masks else np.zeros((0, h, w), bool),
        class_ids=[names.index(lab) + 1 for lab in labels],
        labels=labels,
    )
    return LabeledImage(json_path.parent / str(doc.get("imagePath") or ""), inst, tuple(names))


def _object_order(shape: dict) -> tuple[int, int]:
    """Sort key: shapes with an integer ``group_id`` first, by it; the rest keep file order (stable sort)."""
    gid = shape.get("group_id")
    return (0, gid) if isinstance(gid, int) and not isinstance(gid, bool) else (1, 0)


def _attach_holes(parts: list[np.ndarray], holes: list[np.ndarray]) -> list[Polygon]:
    """Give each hole to the smallest outer ring that contains its first vertex."""
    import cv2

    polys = [Polygon(p, []) for p in parts]
    areas = [abs(cv2.contourArea(p.astype(np.float32))) for p in parts]
    for hole in holes:
        x, y = (float(v) for v in hole[0])
        inside = [i for i, p in enumerate(parts) if cv2.pointPolygonTest(p.astype(np.float32).reshape(-1, 1, 2), (x, y), False) >= 0]
        if inside:
            polys[min(inside, key=lambda i: areas[i])].holes.append(hole)
    return polys
