"""Calibration images for int8 quantisation (:mod:`masklab.export.quantize`): a folder or any dataset.

    >>> images = calibration_images("data/val", limit=300)       # doctest: +SKIP
    >>> len(images), images[0].shape                              # RGB uint8 (H, W, 3), loaded on access

The export layer takes images as arrays and never reads datasets; this module is where a path becomes
that sequence. A dataset in any reader's format (:func:`masklab.data.readers.detect_format`) gives its
images (annotations are not needed); any other folder gives the image files in it (recursively).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from masklab.errors import DatasetError, UsageError
from masklab.io.images import IMAGE_SUFFIXES, load_image

__all__ = ["CalibrationImages", "calibration_images"]


class CalibrationImages(Sequence):
    """Image files loaded one at a time on ``[i]`` (NNCF reads the set several times; holding 300 decoded
    photos would cost gigabytes). ``paths``: the files; ``source``: what the user named, for the card."""

    def __init__(self, paths: Sequence[Path], *, source: str) -> None:
        self.paths = list(paths)
        self.source = source

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):  # int -> RGB uint8 (H, W, 3)
        if isinstance(i, slice):
            return CalibrationImages(self.paths[i], source=self.source)
        return load_image(self.paths[i]).array


def _spread(paths: list[Path], limit: int) -> list[Path]:
    """``limit`` paths evenly spaced over ``paths`` (all when there are fewer): deterministic, and not
    just the first images of a set sorted by, say, scene."""
    if len(paths) <= limit:
        return paths
    return [paths[i] for i in np.linspace(0, len(paths) - 1, limit).round().astype(int)]


def _dataset_paths(path: Path) -> list[Path] | None:
    from masklab.data.dataset import open_dataset
    from masklab.data.readers import detect_format

    try:
        detect_format(path)
    except DatasetError:
        return None  # not a dataset: a plain folder of images
    gt = open_dataset(path).gt
    return [gt.image_path(i) for i in gt.image_ids]


def calibration_images(path: str | os.PathLike, *, limit: int = 300) -> CalibrationImages:
    """The calibration images at ``path`` (a dataset in any supported format, or a folder of images),
    at most ``limit`` of them spread evenly over the set."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"--calib {p}: no such file or folder (give a folder of images or a dataset)")
    paths = _dataset_paths(p)
    if paths is None:
        if not p.is_dir():
            raise UsageError(f"--calib {p}: not a dataset (COCO/VIA/LabelMe JSON, YOLO data.yaml) nor a folder of images")
        paths = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES
                       and not q.name.startswith("."))
    if not paths:
        raise UsageError(f"--calib {p}: found no images ({', '.join(IMAGE_SUFFIXES)})")
    return CalibrationImages(_spread(paths, limit), source=str(p))
