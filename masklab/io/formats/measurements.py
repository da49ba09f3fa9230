"""CSV of per-instance measurements for a whole run, optionally calibrated to a real unit.

Columns: ``image, id, label, class_id, score, quality, area_px, perimeter_px, centroid_x, centroid_y, bbox_x1,
bbox_y1, bbox_x2, bbox_y2`` (pixels; centroid with pixel centres at +0.5, bbox xyxy with x2/y2 the
right/bottom edge; ``quality`` the mask quality in [0, 1], empty where unknown). With ``px_per_unit`` (pixels per unit of length, e.g. 12.5 px per mm) two more:
``area_<unit>2 = area_px / px_per_unit**2`` and ``perimeter_<unit> = perimeter_px / px_per_unit``.
Without it, images whose file gave a pixel size (the per-image JSON's ``pixel_size``) fill the same two
columns in that file's unit (``area_um2``, ``perimeter_um``; one pair per unit seen in the run, empty
for images in another unit or without one), plus ``plane`` when the run has stacks.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from masklab.io.atomic import atomic_write_text

__all__ = ["measurement_rows", "write_measurements_csv", "check_unit", "physical_measures"]


def check_unit(px_per_unit: float | None, unit: str) -> None:
    """Refuse a calibration that is not a positive number or a unit name unfit for a column name."""
    from masklab.errors import UsageError

    if px_per_unit is not None and not px_per_unit > 0:
        raise UsageError(f"px_per_unit must be a positive number of pixels per {unit}, found {px_per_unit}")
    if not re.fullmatch(r"[A-Za-z0-9µ]+", unit or ""):
        raise UsageError(f"unit must be a short name such as mm, cm, um or in; found {unit!r}")


def physical_measures(instances, pixel_size) -> list[dict[str, float]]:
    """Per instance ``{area_<unit>2, perimeter_<unit>}`` for pixels of ``pixel_size``
    (:class:`~masklab.io.planes.PixelSize`): area = pixels x (x * y); perimeter = OpenCV's contour
    lengths, measured with the x and y spacing (exactly ``perimeter_px * x`` for square pixels)."""
    import cv2
    import numpy as np

    sx, sy, unit = pixel_size.x, pixel_size.y, pixel_size.unit
    areas = instances.areas()
    perims = instances.perimeters()
    out = []
    for k in range(len(instances)):
        if abs(sx - sy) <= 1e-12 * max(sx, sy):
            perim = float(perims[k]) * sx
        else:
            bitmap, _, _ = instances.mask_crop(k)
            contours, _ = cv2.findContours(bitmap.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
            perim = sum(cv2.arcLength((c.reshape(-1, 2) * [sx, sy]).astype(np.float32).reshape(-1, 1, 2), True) for c in contours)
        out.append({f"area_{unit}2": round(float(areas[k]) * sx * sy, 9), f"perimeter_{unit}": round(float(perim), 6)})
    return out


def _file_units(records: Sequence[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(rec["pixel_size"]["unit"] for rec in records if rec.get("pixel_size")))


def measurement_rows(records: Sequence[dict[str, Any]], *, px_per_unit: float | None = None, unit: str = "mm") -> list[dict[str, Any]]:
    """Per-image JSON records -> one dict per instance (the CSV's rows)."""
    check_unit(px_per_unit, unit)
    units = [] if px_per_unit is not None else _file_units(records)
    planes = any(rec.get("plane") for rec in records)
    rows = []
    for rec in records:
        for d in rec["instances"]:
            cx, cy = d["centroid_xy"]
            x1, y1, x2, y2 = d["bbox_xyxy"]
            row = {
                "image": rec["image"],
                "id": d["id"],
                "label": d["label"],
                "class_id": d["class_id"],
                "score": d["score"],
                "quality": d.get("quality"),
                "area_px": d["area_px"],
                "perimeter_px": d["perimeter_px"],
                "centroid_x": cx,
                "centroid_y": cy,
                "bbox_x1": x1,
                "bbox_y1": y1,
                "bbox_x2": x2,
                "bbox_y2": y2,
            }
            if px_per_unit is not None:
                row[f"area_{unit}2"] = round(d["area_px"] / px_per_unit**2, 6)
                row[f"perimeter_{unit}"] = round(d["perimeter_px"] / px_per_unit, 6)
            for u in units:
                row[f"area_{u}2"] = d.get(f"area_{u}2", "")
                row[f"perimeter_{u}"] = d.get(f"perimeter_{u}", "")
            if planes:
                row = {"image": row.pop("image"), "plane": (rec.get("plane") or {}).get("index", ""), **row}
            rows.append(row)
    return rows


def write_measurements_csv(path: str | Path, records: Sequence[dict[str, Any]], *, px_per_unit: float | None = None, unit: str = "mm") -> Path:
    """Write ``measurements.csv`` (header only when there are no instances)."""
    rows = measurement_rows(records, px_per_unit=px_per_unit, unit=unit)
    shape = {"image": "", "instances": [_EMPTY]}
    if px_per_unit is None and _file_units(records):
        shape["pixel_size"] = {"unit": _file_units(records)[0]}
    fields = list(measurement_rows([shape], px_per_unit=px_per_unit, unit=unit)[0])
    if px_per_unit is None:
        fields += [f for u in _file_units(records)[1:] for f in (f"area_{u}2", f"perimeter_{u}")]
    if any(rec.get("plane") for rec in records):
        fields.insert(1, "plane")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    return atomic_write_text(path, buf.getvalue())


_EMPTY = {"id": 0, "label": "", "class_id": 0, "score": 0, "area_px": 0, "perimeter_px": 0, "centroid_xy": [0, 0], "bbox_xyxy": [0, 0, 0, 0]}
