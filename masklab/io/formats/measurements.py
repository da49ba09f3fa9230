"""CSV of per-instance measurements for a whole run, optionally calibrated to a real unit.

Columns: ``image, id, label, class_id, score, quality, area_px, perimeter_px, centroid_x, centroid_y, bbox_x1,
bbox_y1, bbox_x2, bbox_y2`` (pixels; centroid with pixel centres at +0.5, bbox xyxy with x2/y2 the
right/bottom edge; ``quality`` the mask quality in [0, 1], empty where unknown). With ``px_per_unit`` (pixels per unit of length, e.g. 12.5 px per mm) two more:
``area_<unit>2 = area_px / px_per_unit**2`` and ``perimeter_<unit> = perimeter_px / px_per_unit``.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from masklab.io.atomic import atomic_write_text

__all__ = ["measurement_rows", "write_measurements_csv", "check_unit"]


def check_unit(px_per_unit: float | None, unit: str) -> None:
    """Refuse a calibration that is not a positive number or a unit name unfit for a column name."""
    from masklab.errors import UsageError

    if px_per_unit is not None and not px_per_unit > 0:
        raise UsageError(f"px_per_unit must be a positive number of pixels per {unit}, found {px_per_unit}")
    if not re.fullmatch(r"[A-Za-z0-9µ]+", unit or ""):
        raise UsageError(f"unit must be a short name such as mm, cm, um or in; found {unit!r}")


def measurement_rows(records: Sequence[dict[str, Any]], *, px_per_unit: float | None = None, unit: str = "mm") -> list[dict[str, Any]]:
    """Per-image JSON records -> one dict per instance (the CSV's rows)."""
    check_unit(px_per_unit, unit)
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
            rows.append(row)
    return rows


def write_measurements_csv(path: str | Path, records: Sequence[dict[str, Any]], *, px_per_unit: float | None = None, unit: str = "mm") -> Path:
    """Write ``measurements.csv`` (header only when there are no instances)."""
    rows = measurement_rows(records, px_per_unit=px_per_unit, unit=unit)
    fields = list(measurement_rows([{"image": "", "instances": [_EMPTY]}], px_per_unit=px_per_unit, unit=unit)[0])
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    return atomic_write_text(path, buf.getvalue())


_EMPTY = {"id": 0, "label": "", "class_id": 0, "score": 0, "area_px": 0, "perimeter_px": 0, "centroid_xy": [0, 0], "bbox_xyxy": [0, 0, 0, 0]}
