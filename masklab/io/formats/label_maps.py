"""PNG label maps: an instance-id map and a semantic class map per image, and a reader back.

- ``<stem>.instances.png``: 16-bit grey, 0 = background, ``k + 1`` = instance ``k`` (the per-image
  JSON's ``id`` + 1). Where objects overlap, the higher score wins.
- ``<stem>.semantic.png``: 8-bit palette PNG, pixel value = the class id (0 = background), palette
  colours as the ``semantic`` visualiser's, so it opens as a coloured picture in any viewer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from masklab.errors import DatasetError
from masklab.io.atomic import atomic_save_image
from masklab.structures.instances import Instances

__all__ = ["instance_id_map", "semantic_map", "write_label_maps", "read_label_maps"]


def _paint_order(instances: Instances) -> np.ndarray:
    return np.argsort(instances.scores, kind="stable")  # ascending: the best-scoring object is painted last


def instance_id_map(instances: Instances) -> np.ndarray:
    """uint16 (H, W): 0 background, ``k + 1`` where instance ``k`` is (highest score on overlaps)."""
    if len(instances) > 65535:
        raise ValueError(f"an instance-id map holds at most 65535 instances, found {len(instances)}")
    out = np.zeros(instances.image_size, np.uint16)
    for k in _paint_order(instances):
        _paint(out, instances, k, k + 1)
    return out


def _paint(out: np.ndarray, instances: Instances, k: int, value) -> None:
    """``out[mask k] = value``; on cropped masks only the crop is touched."""
    if instances.is_cropped:
        b, x0, y0 = instances.mask_crop(k)
        out[y0 : y0 + b.shape[0], x0 : x0 + b.shape[1]][b] = value
    else:
        out[instances.masks[k]] = value


def semantic_map(instances: Instances) -> np.ndarray:
    """uint8 (H, W): the class id of the best-scoring object at each pixel, 0 for background."""
    if len(instances) and (instances.class_ids.min() < 0 or instances.class_ids.max() > 255):
        raise ValueError(f"a semantic PNG holds class ids 0..255, found {instances.class_ids.min()}..{instances.class_ids.max()}")
    out = np.zeros(instances.image_size, np.uint8)
    for k in _paint_order(instances):
        _paint(out, instances, k, instances.class_ids[k])
    return out


def _palette() -> list[int]:
    from masklab.visualize import class_color

    pal = [0, 0, 0]
    for c in range(1, 256):
        pal.extend(class_color(c))
    return pal


def write_label_maps(folder: str | Path, stem: str, instances: Instances) -> list[Path]:
    """Write ``<stem>.instances.png`` and ``<stem>.semantic.png`` into ``folder``; returns the paths."""
    from PIL import Image

    folder = Path(folder)
    sem = Image.fromarray(semantic_map(instances), mode="L").convert("P")
    sem.putpalette(_palette())
    ids = Image.fromarray(instance_id_map(instances))  # uint16 -> 16-bit PNG
    return [
        atomic_save_image(folder / f"{stem}.instances.png", ids),
        atomic_save_image(folder / f"{stem}.semantic.png", sem),
    ]


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    if not Path(path).is_file():
        raise DatasetError(f"{path}: no such label map")
    with Image.open(path) as im:
        return np.asarray(im).astype(np.int64)  # 16-bit PNGs open as I;16 or I (int32) depending on Pillow


def read_label_maps(
    instances_png: str | Path, semantic_png: str | Path | None = None, *, categories: Sequence[str] | None = None
) -> Instances:
    """Label maps -> :class:`Instances` (scores 1.0).

    Each non-zero id of ``instances_png`` becomes one instance (in id order); its class id is the most
    common value of ``semantic_png`` under it (0 without a semantic map); its label is
    ``categories[class_id]`` (``class_<id>`` without ``categories``).
    """
    ids = _read_png(Path(instances_png))
    if ids.ndim != 2:
        raise DatasetError(f"{instances_png}: expected a single-channel instance-id PNG, found shape {ids.shape}")
    sem = None if semantic_png is None else _read_png(Path(semantic_png))
    if sem is not None and sem.shape != ids.shape:
        raise DatasetError(f"{semantic_png}: size {sem.shape} differs from the instance map's {ids.shape}")
    values = [int(v) for v in np.unique(ids) if v != 0]
    masks = np.stack([ids == v for v in values]) if values else np.zeros((0, *ids.shape), bool)
    class_ids = [int(np.bincount(sem[m]).argmax()) if sem is not None else 0 for m in masks]
    labels = [categories[c] if categories is not None and c < len(categories) else f"class_{c}" for c in class_ids]
    return Instances.from_masks(masks, class_ids=class_ids, labels=labels)
