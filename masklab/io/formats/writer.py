"""`OutputWriter`: every file a segmentation run writes, in one place.

Per image (``write``): ``<stem>.json`` always (the per-image record, the source of truth a resumed
run trusts and the run-level files are rebuilt from), an overlay ``<stem>.png`` (one style, or several
side by side), and per format asked for:

- ``png-masks``: ``masks/<stem>.instances.png`` (uint16 ids) and ``masks/<stem>.semantic.png`` (palette);
- ``labelme``: ``labelme/<stem>.json``;
- ``yolo``: a dataset Ultralytics trains on: ``yolo/images/<stem>.<ext>`` (the pixels the model saw),
  ``yolo/labels/<stem>.txt``, and for the run ``yolo/data.yaml`` (``train``/``val`` = ``images``) and
  ``yolo/classes.txt``.

Per run (``finish``), from the per-image JSONs of every finished image, so a resumed run's run-level
files cover images done before the kill too:

- ``coco``: ``coco_results.json`` + ``coco_images.json`` (pycocotools ``COCO(...).loadRes(...)``);
- ``csv``: ``measurements.csv`` (one row per object; calibrated columns with ``px_per_unit`` or the
  file's own pixel size);
- ``label-tiff``, ``imagej-roi``, ``nifti``, ``geojson``, ``gpkg``: one file per input file, its planes
  put back together (:mod:`masklab.io.formats.stacks`).

Physical units: when the image's reader found a pixel size (OME, ImageJ, TIFF resolution in cm, DICOM
PixelSpacing, NIfTI zooms, a projected GeoTIFF), or ``px_per_unit`` is given (it wins), the per-image
JSON has ``"pixel_size": {"x", "y", "z", "unit", "source"}`` and every instance ``area_<unit>2`` and
``perimeter_<unit>`` (anisotropic pixels: the contours measured with their real x and y spacing).

Thread-safety: ``write`` for distinct stems may run concurrently (no shared mutable state; each file
is written atomically).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from masklab.errors import UsageError
from masklab.io.atomic import atomic_save_image, atomic_write_json, atomic_write_text
from masklab.io.formats.common import class_list
from masklab.structures.instances import Instances

__all__ = ["OutputWriter", "image_record", "FORMATS", "DEFAULT_FORMATS", "parse_list", "OVERLAY_MAX_SIDE"]

#: overlays of larger images are drawn on a copy scaled so its longer side is this many pixels
#: (a 12000 x 12000 overlay would be 432 MB and unreadable on screen); 0 = always full size
OVERLAY_MAX_SIDE = 4096

#: Every ``--save`` format. ``json`` is always written (the other files are rebuilt from it).
FORMATS = ("json", "coco", "png-masks", "labelme", "yolo", "csv", "label-tiff", "imagej-roi", "nifti", "geojson", "gpkg",
           "dicom-seg")
DEFAULT_FORMATS = ("json",)


def _box_local(instances: Instances) -> Instances:
    """``instances`` with box-local masks (:class:`~masklab.structures.cropped.CroppedMasks`) when their
    tight boxes cover at most half of the dense (N, H, W) array, else unchanged.

    The files a run writes read each mask several times (overlay, RLE, centroid, perimeter); box-local
    bitmaps make each read cost the object's pixels, not the image's, and give byte-identical files
    (20 masks on a 480 x 640 image: 58 -> 49 ms per image on a 2-core AMX Xeon). The crops are copies,
    so objects that fill their image keep the dense masks: the copy would cost memory and save nothing."""
    from masklab.structures.cropped import CroppedMasks
    from masklab.structures.masks import masks_to_boxes

    if instances.is_cropped or not len(instances):
        return instances
    masks = instances.masks
    boxes = masks_to_boxes(masks).astype(np.int64)  # tight boxes (x1, y1 exclusive); empty masks: zeros
    if 2 * int(np.prod(boxes[:, 2:] - boxes[:, :2], axis=1).sum()) > masks.size:
        return instances
    return dataclasses.replace(instances, masks=CroppedMasks.from_dense(masks, boxes=boxes))


def image_record(name: str, instances: Instances, model: str, *, meta=None, pixel_size=None) -> dict[str, Any]:
    """The per-image JSON document (schema in the README, "JSON format"); ``meta``: the reader's
    :class:`~masklab.io.planes.ImageMeta` (plane, kind, notes), ``pixel_size`` the one in force."""
    h, w = instances.image_size
    rec: dict[str, Any] = {"image": name, "width": w, "height": h, "model": model, "instances": instances.to_dict()}
    if meta is not None:
        rec["kind"] = meta.kind
        if meta.plane is not None:
            rec["plane"] = {**meta.plane.to_json(), **({"axis": meta.notes["axis"]} if "axis" in meta.notes else {})}
        if meta.notes:
            rec["read"] = meta.notes
    if pixel_size is not None:
        from masklab.io.formats.measurements import physical_measures

        rec["pixel_size"] = pixel_size.to_json()
        for d, extra in zip(rec["instances"], physical_measures(instances, pixel_size)):
            d.update(extra)
    return rec


def parse_list(value: str | Sequence[str] | None, *, known: Sequence[str], what: str, none_word: str = "none") -> tuple[str, ...]:
    """``"a,b"`` or ``["a", "b"]`` -> ``("a", "b")``, each checked against ``known``; ``none_word`` -> ()."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    items = [str(v).strip() for v in items if str(v).strip()]
    if items == [none_word]:
        return ()
    bad = [v for v in items if v not in known]
    if bad:
        raise UsageError(f"unknown {what} {', '.join(map(repr, bad))}; choose from {', '.join(known)}")
    return tuple(dict.fromkeys(items))


def _overlay_input(image: np.ndarray, instances: Instances, max_side: int) -> tuple[np.ndarray, Instances]:
    """The image and instances an overlay is drawn from: as they are, or scaled so that the longer side
    is ``max_side`` (0: never scaled)."""
    h, w = image.shape[:2]
    if max_side == 0 or max(h, w) <= max_side:
        return image, instances
    import cv2

    s = max_side / max(h, w)
    size = (max(1, round(h * s)), max(1, round(w * s)))
    return cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA), instances.resized(size)


class OutputWriter:
    """Writes a run's outputs into ``out_dir``.

    Args:
        out_dir: the output folder (created if missing).
        model_name: recorded in each per-image JSON.
        viz: overlay styles (e.g. ``("instance",)``, ``"instance,semantic"``); empty or ``"none"`` for no
            overlay; several give one side-by-side picture.
        formats: what to save besides the overlay, from :data:`FORMATS` (list or comma string).
        categories: the model's category names indexed by class id (``ModelSpec.categories``); needed
            for ``yolo`` (the class list) and names COCO's categories.
        px_per_unit, unit: calibration for ``measurements.csv`` (e.g. 12.5 pixels per ``"mm"``).
        polygon_tolerance: polygon simplification in pixels for LabelMe and YOLO (0 = exact contours).
        overlay_max_side: overlays of images whose longer side exceeds this are drawn at that size
            (image and masks scaled down); 0 = full size (default :data:`OVERLAY_MAX_SIDE`).
    """

    def __init__(
        self,
        out_dir: str | Path,
        *,
        model_name: str,
        viz: str | Sequence[str] = ("instance",),
        formats: str | Sequence[str] = DEFAULT_FORMATS,
        categories: Sequence[str] | None = None,
        px_per_unit: float | None = None,
        unit: str = "mm",
        polygon_tolerance: float = 1.0,
        overlay_max_side: int = OVERLAY_MAX_SIDE,
        stitch_3d: float | None = None,
    ) -> None:
        from masklab.io.formats.measurements import check_unit
        from masklab.visualize import STYLES, get_visualizer

        self.viz = parse_list(viz, known=STYLES, what="visualisation style")
        self.formats = parse_list(formats, known=FORMATS, what="output format")
        if "json" not in self.formats:
            self.formats = ("json", *self.formats)
        self.categories = None if categories is None else tuple(categories)
        self.class_names = None if categories is None else class_list(categories)
        if "yolo" in self.formats and self.class_names is None:
            raise UsageError("the yolo format needs the model's category list (OutputWriter(categories=...))")
        check_unit(px_per_unit, unit)
        if polygon_tolerance < 0:
            raise UsageError(f"polygon tolerance must be >= 0 pixels, found {polygon_tolerance}")
        self.px_per_unit, self.unit, self.polygon_tolerance = px_per_unit, unit, float(polygon_tolerance)
        if overlay_max_side < 0:
            raise UsageError(f"overlay_max_side must be >= 0 pixels (0 = full size), found {overlay_max_side}")
        self.overlay_max_side = int(overlay_max_side)
        if stitch_3d is not None and not 0 < stitch_3d <= 1:
            raise UsageError(f"--stitch-3d: expected an IoU in (0, 1], such as 0.25, found {stitch_3d}")
        self.stitch_3d = stitch_3d
        self._visualizers = [get_visualizer(style) for style in self.viz]  # bad style: error before any work
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.model_name = model_name

    def settings(self) -> dict[str, Any]:
        """The writer's resolved options (for ``run.json``)."""
        return {
            "viz": list(self.viz),
            "save": list(self.formats),
            "px_per_unit": self.px_per_unit,
            "unit": self.unit,
            "polygon_tolerance": self.polygon_tolerance,
            **({"stitch_3d": self.stitch_3d} if self.stitch_3d is not None else {}),
        }

    def json_path(self, stem: str) -> Path:
        return self.out_dir / f"{stem}.json"

    def outputs_for(self, stem: str) -> list[Path]:
        """Every per-image file ``write`` produces for ``stem`` (all present = the image is done)."""
        paths = [self.json_path(stem)]
        if self._visualizers:
            paths.append(self.out_dir / f"{stem}.png")
        if "png-masks" in self.formats:
            paths += [self.out_dir / "masks" / f"{stem}.instances.png", self.out_dir / "masks" / f"{stem}.semantic.png"]
        if "labelme" in self.formats:
            paths.append(self.out_dir / "labelme" / f"{stem}.json")
        if "yolo" in self.formats:
            paths += [self.out_dir / "yolo" / "labels" / f"{stem}.txt", self._yolo_image(stem, None)]
        return paths

    def _yolo_image(self, stem: str, image_name: str | None) -> Path:
        """``yolo/images/<stem>.<ext>``: JPEG for JPEG sources (quality 95), PNG for the rest. ``image_name`` None: the file already written for ``stem`` (any extension)."""
        folder = self.out_dir / "yolo" / "images"
        if image_name is None:
            found = [folder / f"{stem}{ext}" for ext in (".jpg", ".jpeg") if (folder / f"{stem}{ext}").is_file()]
            return found[0] if found else folder / f"{stem}.png"
        ext = Path(image_name).suffix.lower()
        return folder / f"{stem}{ext if ext in ('.jpg', '.jpeg') else '.png'}"

    def pixel_size_for(self, meta):
        """The pixel size in force for an image: ``px_per_unit`` when given, else the file's, else None."""
        from masklab.io.planes import PixelSize

        if self.px_per_unit is not None:
            z = meta.pixel_size.z if meta is not None and meta.pixel_size is not None else None
            return PixelSize(x=1 / self.px_per_unit, y=1 / self.px_per_unit, z=z, unit=self.unit, source="--px-per-unit")
        return None if meta is None else meta.pixel_size

    def write(self, *, stem: str, image_name: str, image: np.ndarray, instances: Instances, meta=None) -> list[Path]:
        """Write the per-image files for one image (RGB uint8 (H, W, 3)); the JSON last, so its presence
        means the rest is complete. ``meta``: the reader's :class:`~masklab.io.planes.ImageMeta`; for a
        raster window, objects whose centroid lies outside the window's core are left to its neighbour."""
        from masklab.io.formats.label_maps import write_label_maps
        from masklab.io.formats.labelme import write_labelme
        from masklab.io.formats.yolo import write_yolo

        instances = _box_local(instances)
        if meta is not None and meta.plane is not None and meta.plane.keep is not None and len(instances):
            x0, y0, x1, y1 = meta.plane.keep
            c = np.nan_to_num(instances.centroids(), nan=-1.0)
            instances = instances[(c[:, 0] >= x0) & (c[:, 0] < x1) & (c[:, 1] >= y0) & (c[:, 1] < y1)]
        written = []
        if self._visualizers:
            from masklab.visualize import render

            small, shown = _overlay_input(image, instances, self.overlay_max_side)
            written.append(atomic_save_image(self.out_dir / f"{stem}.png", render(small, shown, self.viz)))
        if "png-masks" in self.formats:
            written += write_label_maps(self.out_dir / "masks", stem, instances)
        if "labelme" in self.formats:
            written.append(
                write_labelme(self.out_dir / "labelme" / f"{stem}.json", instances, image_path=image_name, tolerance=self.polygon_tolerance)
            )
        if "yolo" in self.formats:
            target = self._yolo_image(stem, image_name)
            written.append(atomic_save_image(target, image, **({"quality": 95} if target.suffix != ".png" else {})))
            written.append(
                write_yolo(self.out_dir / "yolo" / "labels" / f"{stem}.txt", instances, self.class_names, tolerance=self.polygon_tolerance)
            )
        record = image_record(image_name, instances, self.model_name, meta=meta, pixel_size=self.pixel_size_for(meta))
        written.append(atomic_write_json(self.json_path(stem), record))
        return written

    def read_record(self, stem: str) -> dict[str, Any]:
        return json.loads(self.json_path(stem).read_text())

    def finish(self, stems: Sequence[str]) -> list[Path]:
        """Write run-level files for the images ``stems`` (those that succeeded), from their per-image
        JSONs. Returns the paths."""
        from masklab.io.formats.coco import write_coco
        from masklab.io.formats.measurements import write_measurements_csv
        from masklab.io.formats.stacks import STACK_FORMATS, write_stacks
        from masklab.io.formats.yolo import write_yolo_classes, yolo_data_yaml

        written: list[Path] = []
        if set(STACK_FORMATS) & set(self.formats) or self.stitch_3d is not None:
            written += write_stacks(self.out_dir, self.formats, stems, self.read_record, stitch_3d=self.stitch_3d)
        if not {"coco", "csv"} & set(self.formats) and "yolo" not in self.formats:
            return written
        records = [self.read_record(s) for s in stems]
        if "coco" in self.formats:
            written += write_coco(self.out_dir, records, categories=self.categories)
        if "csv" in self.formats:
            written.append(
                write_measurements_csv(self.out_dir / "measurements.csv", records, px_per_unit=self.px_per_unit, unit=self.unit)
            )
        if "yolo" in self.formats:
            written.append(write_yolo_classes(self.out_dir / "yolo" / "classes.txt", self.class_names))
            yaml = yolo_data_yaml(self.class_names, train="images")
            written.append(atomic_write_text(self.out_dir / "yolo" / "data.yaml", yaml))
        return written
