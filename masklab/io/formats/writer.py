"""`OutputWriter`: every file a segmentation run writes, in one place.

Per image (``write``): ``<stem>.json`` always (the per-image record, the source of truth a resumed
run trusts), plus an overlay ``<stem>.png`` per visualisation style. Per run (``finish``): files built
from the per-image JSONs of every finished image, so a resumed run's run-level files cover images
done before the kill too.

Thread-safety: ``write`` for distinct stems may run concurrently (each file is written atomically).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from masklab.io.atomic import atomic_save_image, atomic_write_json
from masklab.structures.instances import Instances

__all__ = ["OutputWriter", "image_record"]


def image_record(name: str, instances: Instances, model: str) -> dict[str, Any]:
    """The per-image JSON document (schema in the README, "JSON format")."""
    h, w = instances.image_size
    return {"image": name, "width": w, "height": h, "model": model, "instances": instances.to_dict()}


class OutputWriter:
    """Writes a run's outputs into ``out_dir``.

    Args:
        out_dir: the output folder (created if missing).
        model_name: recorded in each per-image JSON.
        viz: overlay styles (e.g. ``("instance",)``); empty for no overlay.
    """

    def __init__(self, out_dir: str | Path, *, model_name: str, viz: Sequence[str] = ("instance",)) -> None:
        from masklab.visualize import get_visualizer

        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.model_name = model_name
        self.viz = tuple(viz)
        self._visualizers = [get_visualizer(style) for style in self.viz]  # bad style: error before any work

    def json_path(self, stem: str) -> Path:
        return self.out_dir / f"{stem}.json"

    def outputs_for(self, stem: str) -> list[Path]:
        """Every per-image file ``write`` produces for ``stem`` (all present = the image is done)."""
        paths = [self.json_path(stem)]
        if self._visualizers:
            paths.append(self.out_dir / f"{stem}.png")
        return paths

    def write(self, *, stem: str, image_name: str, image: np.ndarray, instances: Instances) -> list[Path]:
        """Write the per-image files for one image (RGB uint8 (H, W, 3)); the JSON last, so its presence
        means the rest is complete."""
        written = []
        if self._visualizers:
            panels = [v.annotate(image, instances) for v in self._visualizers]
            overlay = panels[0] if len(panels) == 1 else np.concatenate(panels, axis=1)
            written.append(atomic_save_image(self.out_dir / f"{stem}.png", overlay))
        written.append(atomic_write_json(self.json_path(stem), image_record(image_name, instances, self.model_name)))
        return written

    def read_record(self, stem: str) -> dict[str, Any]:
        return json.loads(self.json_path(stem).read_text())

    def finish(self, stems: Sequence[str]) -> list[Path]:
        """Write run-level files for the images ``stems`` (those that succeeded). Returns the paths."""
        return []
