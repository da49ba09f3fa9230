"""Run-level outputs that put the planes of one file back together (``OutputWriter.finish`` calls this).

Every plane (or raster window) was written as its own per-image JSON; here the JSONs of one input file
are read back in plane order and streamed into the asked outputs, one file at a time:

- ``label-tiff``: ``labels/<stem>.tif`` (:mod:`.label_tiff`; a GeoTIFF with the raster's CRS and
  transform for georeferenced inputs, written window by window);
- ``imagej-roi``: ``rois/<stem>.zip`` (:mod:`.imagej_roi`);
- ``nifti``: ``nifti/<stem>.nii.gz`` for NIfTI inputs (:mod:`.nifti_labels`);
- ``geojson`` / ``gpkg``: ``geo/<stem>.geojson`` / ``.gpkg`` for georeferenced inputs (:mod:`.geo`);
- ``dicom-seg``: ``dicom-seg/<stem>.dcm`` for DICOM inputs (:mod:`.dicom_seg`, highdicom);
- with ``stitch_3d``: ``<stem>.objects3d.csv`` (one row per 3-D object: planes, voxels, volume).

Object ids are the same in all of them: numbered through the stack in plane order (1..N), or the 3-D
object ids with ``stitch_3d`` (:mod:`.stitch`). Inputs a format does not apply to (``nifti`` for a TIFF,
``gpkg`` for an image without a CRS) are skipped with a warning naming them.
"""

from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from masklab.io.atomic import atomic_write_text
from masklab.io.formats.stitch import LabelPainter
from masklab.io.planes import PixelSize
from masklab.structures.instances import Instances

__all__ = ["STACK_FORMATS", "write_stacks", "group_stems"]

STACK_FORMATS = ("label-tiff", "imagej-roi", "nifti", "geojson", "gpkg", "dicom-seg")


def group_stems(stems: Sequence[str], read: Callable[[str], dict[str, Any]]) -> dict[str, list[tuple[int, str]]]:
    """``{file stem: [(plane index, plane stem), ...] in plane order}``; a plain image is its own group."""
    groups: dict[str, list[tuple[int, str]]] = {}
    for s in stems:
        plane = read(s).get("plane") or {}
        groups.setdefault(plane.get("stem", s), []).append((int(plane.get("index", 0)), s))
    return {g: sorted(v) for g, v in groups.items()}


class _Group:
    """What the sinks need to know about one input file (from its first plane's record)."""

    def __init__(self, stem: str, first: dict[str, Any]) -> None:
        self.stem = stem
        self.source = str(first["image"])
        self.kind = first.get("kind")
        plane = first.get("plane") or {}
        self.count = int(plane.get("count", 1))
        self.axis = plane.get("axis")
        self.hw = (int(first["height"]), int(first["width"]))
        self.pixel_size = PixelSize.from_json(first.get("pixel_size"))
        self.georef = None
        if self.kind == "geotiff":
            from masklab.io.formats.geo import raster_georef

            self.georef = raster_georef(self.source)


class _LabelTiff:
    def __init__(self, out: Path, g: _Group) -> None:
        self.path = out / "labels" / f"{g.stem}.tif"
        self.g = g
        self.stack = np.zeros((g.count, *g.hw), np.uint32) if g.count > 1 else np.zeros(g.hw, np.uint32)

    def add(self, index, rec, inst, ids, labels) -> None:
        if self.stack.ndim == 3:
            self.stack[index] = labels
        else:
            self.stack[...] = labels

    def close(self) -> list[Path]:
        from masklab.io.formats.label_tiff import write_label_tiff

        return [write_label_tiff(self.path, self.stack, pixel_size=self.g.pixel_size)]


class _Rois:
    def __init__(self, out: Path, g: _Group) -> None:
        self.path, self.g, self.entries = out / "rois" / f"{g.stem}.zip", g, []

    def add(self, index, rec, inst, ids, labels) -> None:
        from masklab.io.formats.imagej_roi import RoiEntry
        from masklab.io.formats.outlines import pixel_polygons

        stack = self.g.count > 1
        for k, oid in enumerate(ids.tolist()):
            bitmap, x0, y0 = inst.mask_crop(k)
            name = f"{index:04d}-{inst.labels[k]}-{oid}" if stack else f"{inst.labels[k]}-{oid}"
            self.entries.append(RoiEntry(name, pixel_polygons(bitmap, offset_xy=(x0, y0)), plane=index if stack else None))

    def close(self) -> list[Path]:
        from masklab.io.formats.imagej_roi import write_roi_zip

        return [write_roi_zip(self.path, self.entries)]


class _Nifti:
    def __init__(self, out: Path, g: _Group) -> None:
        from masklab.io.formats.nifti_labels import label_volume

        self.path, self.g = out / "nifti" / f"{g.stem}.nii.gz", g
        self.img, self.volume = label_volume(g.source)

    def add(self, index, rec, inst, ids, labels) -> None:
        from masklab.io.formats.nifti_labels import put_slice

        put_slice(self.volume, labels, axis=int(self.g.axis if self.g.axis is not None else 2), index=index)

    def close(self) -> list[Path]:
        from masklab.io.formats.nifti_labels import write_label_nifti

        return [write_label_nifti(self.path, self.volume, source_img=self.img)]


class _Geo:
    def __init__(self, out: Path, g: _Group, formats: set[str]) -> None:
        self.folder, self.g, self.formats, self.features = out / "geo", g, formats, []

    def add(self, index, rec, inst, ids, labels) -> None:
        from masklab.io.formats.geo import features_of

        window = (rec.get("plane") or {}).get("window") or [0, 0]
        self.features += features_of(inst, ids=ids.tolist(), transform=self.g.georef[0], offset_xy=(window[0], window[1]),
                                     window=index, image=self.g.source)

    def close(self) -> list[Path]:
        from masklab.io.formats.geo import write_geo

        return write_geo(self.folder, self.g.stem, self.features, crs=self.g.georef[1], formats=self.formats)


class _GeoLabels:
    """A label GeoTIFF written window by window (only pixels still 0 are painted: objects that reach into
    a neighbour's overlap keep all their pixels)."""

    def __init__(self, out: Path, g: _Group) -> None:
        from masklab.io.formats.geo import open_label_raster

        self.path = out / "labels" / f"{g.stem}.tif"
        self.dst, self.tmp = open_label_raster(self.path, g.source)

    def add(self, index, rec, inst, ids, labels) -> None:
        from rasterio.windows import Window

        c0, r0 = ((rec.get("plane") or {}).get("window") or [0, 0])[:2]
        win = Window(c0, r0, labels.shape[1], labels.shape[0])
        cur = self.dst.read(1, window=win)
        put = (cur == 0) & (labels > 0)
        cur[put] = labels[put]
        self.dst.write(cur, 1, window=win)

    def close(self) -> list[Path]:
        import os

        self.dst.close()
        os.replace(self.tmp, self.path)
        return [self.path]


class _DicomSeg:
    def __init__(self, out: Path, g: _Group) -> None:
        self.path, self.g = out / "dicom-seg" / f"{g.stem}.dcm", g
        self.frames: dict[int, dict[str, np.ndarray]] = {}
        self.labels: list[str] = []

    def add(self, index, rec, inst, ids, labels) -> None:
        by_label = self.frames.setdefault(index, {})
        for k, label in enumerate(inst.labels):
            bitmap, x0, y0 = inst.mask_crop(k)
            m = by_label.setdefault(label, np.zeros(inst.image_size, bool))
            m[y0 : y0 + bitmap.shape[0], x0 : x0 + bitmap.shape[1]] |= bitmap
            if label not in self.labels:
                self.labels.append(label)

    def close(self) -> list[Path]:
        from masklab.io.formats.dicom_seg import write_dicom_seg

        if not self.labels:
            warnings.warn(f"{self.g.source}: not written: dicom-seg (no objects found: a Segmentation needs a segment)", stacklevel=3)
            return []
        try:
            return [write_dicom_seg(self.path, self.g.source, self.frames, self.labels)]
        except (ValueError, AttributeError, KeyError, TypeError) as e:  # highdicom's checks of the source image
            warnings.warn(f"{self.g.source}: not written: dicom-seg ({str(e).splitlines()[0] if str(e) else type(e).__name__})", stacklevel=3)
            return []


class _Objects3d:
    def __init__(self, out: Path, g: _Group) -> None:
        self.path, self.g = out / f"{g.stem}.objects3d.csv", g
        self.rows: dict[int, dict[str, Any]] = {}

    def add(self, index, rec, inst, ids, labels) -> None:
        counts = np.bincount(labels.ravel())
        for k, oid in enumerate(ids.tolist()):
            r = self.rows.setdefault(oid, {"object_id": oid, "label": inst.labels[k], "first_plane": index, "last_plane": index,
                                            "n_planes": 0, "voxels": 0})
            r["last_plane"] = max(r["last_plane"], index)
            r["n_planes"] += 1
            r["voxels"] += int(counts[oid]) if oid < len(counts) else 0

    def close(self) -> list[Path]:
        ps = self.g.pixel_size
        fields = ["object_id", "label", "first_plane", "last_plane", "n_planes", "voxels"]
        if ps is not None and ps.z is not None:
            fields.append(f"volume_{ps.unit}3")
            for r in self.rows.values():
                r[fields[-1]] = round(r["voxels"] * ps.x * ps.y * ps.z, 6)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=fields)
        w.writeheader()
        w.writerows(sorted(self.rows.values(), key=lambda r: r["object_id"]))
        return [atomic_write_text(self.path, buf.getvalue())]


def _sinks(out: Path, g: _Group, formats: set[str], stitch: float | None) -> list:
    sinks: list = []
    skipped = []
    if "label-tiff" in formats:
        if g.georef is not None:
            sinks.append(_GeoLabels(out, g))
        elif g.kind == "geotiff" and g.count > 1:
            skipped.append("label-tiff (a raster read by windows without a CRS)")
        else:
            sinks.append(_LabelTiff(out, g))
    if "imagej-roi" in formats:
        sinks.append(_Rois(out, g))
    if "nifti" in formats:
        (sinks.append(_Nifti(out, g)) if g.kind == "nifti" else skipped.append("nifti (not a NIfTI input)"))
    if "dicom-seg" in formats:
        (sinks.append(_DicomSeg(out, g)) if g.kind == "dicom" else skipped.append("dicom-seg (not a DICOM input)"))
    geo = formats & {"geojson", "gpkg"}
    if geo:
        (sinks.append(_Geo(out, g, geo)) if g.georef is not None else skipped.append(f"{'/'.join(sorted(geo))} (no georeferencing)"))
    if stitch is not None and g.count > 1:
        sinks.append(_Objects3d(out, g))
    if skipped:
        warnings.warn(f"{g.source}: not written: {', '.join(skipped)}", stacklevel=3)
    return sinks


def write_stacks(out: Path, formats: Sequence[str], stems: Sequence[str], read: Callable[[str], dict[str, Any]], *,
                 stitch_3d: float | None = None) -> list[Path]:
    """Write the stack outputs of every input file whose planes are in ``stems``; returns the paths."""
    asked = set(formats) & set(STACK_FORMATS)
    written: list[Path] = []
    for gstem, members in group_stems(stems, read).items():
        g = _Group(gstem, read(members[0][1]))
        sinks = _sinks(out, g, asked, stitch_3d if g.kind != "geotiff" else None)
        if not sinks:
            continue
        painter = LabelPainter(stitch_3d if g.kind != "geotiff" else None)
        for index, stem in members:
            rec = read(stem)
            inst = Instances.from_dict(rec["instances"], (int(rec["height"]), int(rec["width"]))).cropped()
            ids, labels = painter.plane(inst, index)
            for s in sinks:
                s.add(index, rec, inst, ids, labels)
        for s in sinks:
            written += s.close()
    return written
