"""The Parquet tables of a distributed run, built from the per-image JSON records.

``instances/part-*.parquet`` — one row per instance, the per-image JSON's ``instances`` flattened:

===============  ==================  ==========================================================
column           type                meaning
===============  ==================  ==========================================================
image            string              the input as named in the per-image JSON's ``image``
stem             string              the output name (``<stem>.json``)
width, height    int32               image size in pixels
id               int32               instance index in the image (descending score order)
label            string              class name
class_id         int32               the model's class id
score            float64             0..1
quality          float64             mask quality 0..1 (null where unknown)
bbox_xyxy        list<float64>[4]    x1, y1, x2, y2 in pixels (x2/y2 the right/bottom edges)
area_px          int64               mask pixels
perimeter_px     float64             contour length in pixels
centroid_xy      list<float64>[2]    pixel centres at +0.5
rle_size         list<int32>[2]      [height, width]
rle_counts       string              COCO compressed RLE (column-major); decode with pycocotools
===============  ==================  ==========================================================

``images/part-*.parquet`` — one row per finished image (image, stem, width, height, instances, counts as
JSON ``{label: n}``, seconds); a rerun skips the stems listed there. Both tables read with
``pandas.read_parquet(DIR / "instances")``, DuckDB ``read_parquet('DIR/instances/*.parquet')`` or
Spark ``spark.read.parquet``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

__all__ = ["INSTANCES_DIR", "IMAGES_DIR", "instance_schema", "image_schema", "instance_table", "image_table", "record_from_rows"]

INSTANCES_DIR = "instances"
IMAGES_DIR = "images"


def instance_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("image", pa.string()),
            ("stem", pa.string()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("id", pa.int32()),
            ("label", pa.string()),
            ("class_id", pa.int32()),
            ("score", pa.float64()),
            ("quality", pa.float64()),
            ("bbox_xyxy", pa.list_(pa.float64(), 4)),
            ("area_px", pa.int64()),
            ("perimeter_px", pa.float64()),
            ("centroid_xy", pa.list_(pa.float64(), 2)),
            ("rle_size", pa.list_(pa.int32(), 2)),
            ("rle_counts", pa.string()),
        ]
    )


def image_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("image", pa.string()),
            ("stem", pa.string()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("instances", pa.int32()),
            ("counts", pa.string()),
            ("seconds", pa.float64()),
        ]
    )


def instance_table(records: Sequence[tuple[str, dict[str, Any]]]):
    """``(stem, per-image JSON record)`` pairs -> the instances table (one row per instance)."""
    import pyarrow as pa

    rows = []
    for stem, rec in records:
        for d in rec["instances"]:
            rows.append(
                {
                    "image": rec["image"],
                    "stem": stem,
                    "width": rec["width"],
                    "height": rec["height"],
                    "id": d["id"],
                    "label": d["label"],
                    "class_id": d["class_id"],
                    "score": d["score"],
                    "quality": d.get("quality"),
                    "bbox_xyxy": d["bbox_xyxy"],
                    "area_px": d["area_px"],
                    "perimeter_px": d["perimeter_px"],
                    "centroid_xy": d["centroid_xy"],
                    "rle_size": d["rle"]["size"],
                    "rle_counts": d["rle"]["counts"],
                }
            )
    return pa.Table.from_pylist(rows, schema=instance_schema())


def image_table(records: Sequence[tuple[str, dict[str, Any], float]]):
    """``(stem, per-image JSON record, seconds)`` triples -> the images table (one row per image)."""
    import pyarrow as pa

    rows = []
    for stem, rec, seconds in records:
        counts: dict[str, int] = {}
        for d in rec["instances"]:
            counts[d["label"]] = counts.get(d["label"], 0) + 1
        rows.append(
            {
                "image": rec["image"],
                "stem": stem,
                "width": rec["width"],
                "height": rec["height"],
                "instances": len(rec["instances"]),
                "counts": json.dumps(counts),
                "seconds": seconds,
            }
        )
    return pa.Table.from_pylist(rows, schema=image_schema())


def record_from_rows(image: dict[str, Any], rows: Sequence[dict[str, Any]], *, model: str) -> dict[str, Any]:
    """Rebuild the per-image JSON record from an images-table row and its instances-table rows."""
    rows = sorted(rows, key=lambda r: r["id"])
    return {
        "image": image["image"],
        "width": image["width"],
        "height": image["height"],
        "model": model,
        "instances": [
            {
                "id": r["id"],
                "label": r["label"],
                "class_id": r["class_id"],
                "score": r["score"],
                "quality": r.get("quality"),
                "bbox_xyxy": list(r["bbox_xyxy"]),
                "area_px": r["area_px"],
                "perimeter_px": r["perimeter_px"],
                "centroid_xy": list(r["centroid_xy"]),
                "rle": {"size": list(r["rle_size"]), "counts": r["rle_counts"]},
            }
            for r in rows
        ],
    }
