"""ImageJ / Fiji ROI zips (roifile): one ROI per object, tracing the pixel boundary.

``rois/<stem>.zip`` per image or stack, openable with Fiji's ROI Manager (File > Open, or drag the zip
onto Fiji). Each object is a ``TRACED`` polygon ROI (what ImageJ's wand gives) whose integer vertices
are pixel corners (:mod:`masklab.io.formats.outlines`), so ImageJ's filled ROI covers exactly the mask's
pixels (not one pixel less all round, cellpose #757). An object with holes or several parts is one
*composite* ROI (ImageJ's ShapeRoi: MOVETO/LINETO/CLOSE paths; holes run opposite to outer rings, so
both the even-odd and the non-zero fill rule leave them empty). Stacks: ``position`` = the plane
(1-based in the file, as ImageJ counts). Names: ``<label>-<id>`` (``<plane>-<label>-<id>`` in stacks,
4-digit plane), ids as in the label images (``label-tiff``, ``nifti``).
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from masklab.io.atomic import atomic_write_bytes
from masklab.optional import require
from masklab.structures.polygons import Polygon

__all__ = ["RoiEntry", "make_roi", "write_roi_zip"]


@dataclass(frozen=True)
class RoiEntry:
    """One object: ``name``, ``polygons`` in pixel-corner coordinates, ``plane`` (0-based) or None."""

    name: str
    polygons: list[Polygon]
    plane: int | None = None


def make_roi(entry: RoiEntry):
    """The ``roifile.ImagejRoi`` of one object (None when it has no pixels)."""
    roifile = require("roifile")
    rings = [r for p in entry.polygons for r in p.rings()]
    if not rings:
        return None
    if len(rings) == 1:
        roi = roifile.ImagejRoi.frompoints(np.round(rings[0]).astype(np.int32), name=entry.name, position=entry.plane)
        roi.roitype = roifile.ROI_TYPE.TRACED
        # vertices are pixel corners: the bounds end at the largest corner (frompoints assumes pixel indices, +1)
        roi.right, roi.bottom = int(np.max(rings[0][:, 0])), int(np.max(rings[0][:, 1]))
        return roi
    path: list[float] = []
    for ring in rings:
        path += [0.0, float(ring[0, 0]), float(ring[0, 1])]  # MOVETO
        for x, y in ring[1:]:
            path += [1.0, float(x), float(y)]  # LINETO
        path.append(4.0)  # CLOSE
    allpts = np.concatenate(rings)
    lo, hi = allpts.min(axis=0), allpts.max(axis=0)
    roi = roifile.ImagejRoi()
    roi.roitype = roifile.ROI_TYPE.RECT
    roi.name = entry.name
    roi.left, roi.top, roi.right, roi.bottom = int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1])
    roi.multi_coordinates = np.asarray(path, np.float32)
    roi.shape_roi_size = len(path)
    if entry.plane is not None:
        roi.position = entry.plane + 1
    return roi


def write_roi_zip(path: str | Path, entries: Iterable[RoiEntry]) -> Path:
    """Write the ROI zip (entries ``<name>.roi``, names made unique); atomically."""
    buf = io.BytesIO()
    seen: set[str] = set()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for entry in entries:
            roi = make_roi(entry)
            if roi is None:
                continue
            name, k = entry.name, 1
            while name in seen:
                k += 1
                name = f"{entry.name}-{k}"
            seen.add(name)
            zf.writestr(f"{name}.roi", roi.tobytes())
    return atomic_write_bytes(path, buf.getvalue())
