"""The one dataset interface training uses: image + :class:`Instances` ground truth + class names.

    >>> ds = open_dataset("data/shapes/train")          # any format of masklab.data.readers   # doctest: +SKIP
    >>> ds.class_names                                  # ('square', 'circle', 'triangle')
    >>> s = ds[0]; s.image.shape, s.target.class_ids    # (H, W, 3) uint8; 1 + index in class_names

Whatever the file format, the data go through :class:`masklab.data.coco.CocoGroundTruth`, so the same
checks apply everywhere and every dataset can be evaluated with :mod:`masklab.evaluation`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from masklab.data.coco import CocoGroundTruth
from masklab.data.readers import DatasetSource, read_dataset
from masklab.errors import DatasetError
from masklab.structures.instances import Instances

__all__ = ["Sample", "SegmentationDataset", "open_dataset"]


@dataclass(frozen=True)
class Sample:
    """One training/validation example.

    ``image``: uint8 (H, W, 3) RGB. ``target``: ground truth with ``class_ids`` = 1 + index into the
    dataset's ``class_names`` (0 is background, as torchvision's targets expect), ``labels`` the names,
    and ``extra["iscrowd"]`` bool (N,). ``image_id``: the dataset's image id.
    """

    image: np.ndarray
    target: Instances
    image_id: int


class SegmentationDataset:
    """Indexable dataset of :class:`Sample` over a :class:`CocoGroundTruth` (any source format).

    Attributes:
        gt: the ground truth (also what the evaluator scores against).
        class_names: the categories in file order; training class id ``i + 1`` is ``class_names[i]``.
        format: the source format (``coco``, ``via``, ``labelme``, ``voc``, ``yolo``).
    """

    def __init__(self, gt: CocoGroundTruth, *, format: str = "coco") -> None:
        self.gt = gt
        self.format = format
        self.class_names: tuple[str, ...] = gt.category_names
        self._train_id = {cid: i + 1 for i, cid in enumerate(gt.categories)}
        self._ids = gt.image_ids

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def image_ids(self) -> list[int]:
        return list(self._ids)

    def __getitem__(self, index: int) -> Sample:
        image_id = self._ids[index]
        image = self.gt.load_image(image_id).array
        inst = self.gt.instances(image_id)
        target = Instances(
            boxes=inst.boxes,
            masks=inst.masks,
            scores=inst.scores,
            class_ids=[self._train_id[c] for c in inst.class_ids.tolist()],
            labels=inst.labels,
            image_size=inst.image_size,
            extra={"iscrowd": inst.extra["iscrowd"]},
        )
        return Sample(image, target, image_id)

    def __repr__(self) -> str:
        return f"SegmentationDataset({self.gt.source_name!r}, format={self.format}, images={len(self)}, classes={list(self.class_names)})"


def to_ground_truth(src: DatasetSource) -> CocoGroundTruth:
    """The checked :class:`CocoGroundTruth` of a reader's output; refuses a source with problems."""
    if src.problems:
        shown = "\n".join(src.problems[:5])
        raise DatasetError(
            f"{src.source_name}: {len(src.problems)} problems in the {src.format} dataset, e.g.\n{shown}\n"
            "run `masklab validate` on it for the full list"
        )
    return CocoGroundTruth.from_dict(src.coco, root=src.root, source_name=src.source_name)


def open_dataset(path: str | os.PathLike, *, format: str | None = None, **options) -> SegmentationDataset:
    """Read the dataset at ``path`` (format auto-detected, see :func:`masklab.data.readers.detect_format`)."""
    src = read_dataset(path, format=format, **options)
    ds = SegmentationDataset(to_ground_truth(src), format=src.format)
    if len(ds) == 0:
        raise DatasetError(f"{path}: the dataset has no images")
    if not ds.class_names:
        raise DatasetError(f"{path}: the dataset has no categories")
    return ds
