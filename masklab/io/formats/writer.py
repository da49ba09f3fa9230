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
- ``csv``: ``measurements.csv`` (one row per object; calibrated columns with ``px_per_unit``).

Thread-safety: ``write`` for distinct stems may run concurrently (no shared mutable state; each file
is written atomically).
"""

from __future__ import annotations

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
FORMATS = ("json", "coco", "png-masks", "labelme", "yolo", "csv")
DEFAULT_FORMATS = ("json",)


def image_record(name: str, instances: Instances, model: str) -> dict[str, Any]:
    """The per-image JSON document (schema in the README, "JSON format")."""
    h, w = instances.image_size
    return {"image": name, "width": w, "height": h, "model": model, "instances": instances.to_dict()}


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

    def write(self, *, stem: str, image_name: str, image: np.ndarray, instances: Instances) -> list[Path]:
        """Write the per-image files for one image (RGB uint8 (H, W, 3)); the JSON last, so its presence
        means the rest is complete."""
        from masklab.io.formats.label_maps import write_label_maps
        from masklab.io.formats.labelme import write_labelme
        from masklab.io.formats.yolo import write_yolo

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
        written.append(atomic_write_json(self.json_path(stem), image_record(image_name, instances, self.model_name)))
        return written

    def read_record(self, stem: str) -> dict[str, Any]:
        return json.loads(self.json_path(stem).read_text())

    def finish(self, stems: Sequence[str]) -> list[Path]:
        """Write run-level files for the images ``stems`` (those that succeeded), from their per-image
        JSONs. Returns the paths."""
        from masklab.io.formats.coco import write_coco
        from masklab.io.formats.measurements import write_measurements_csv
        from masklab.io.formats.yolo import write_yolo_classes, yolo_data_yaml

        written: list[Path] = []
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
