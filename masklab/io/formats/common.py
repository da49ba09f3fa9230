"""What the dataset readers return, and small helpers the format modules share."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from masklab.structures.instances import Instances

__all__ = ["LabeledImage", "class_list", "NOT_CLASSES"]

#: Category names that are not classes (torchvision's background and COCO's unused ids).
NOT_CLASSES = frozenset({"__background__", "N/A", "BG"})


class LabeledImage(NamedTuple):
    """One annotated image from a reader (LabelMe, YOLO-seg).

    ``image_path``: the image file the annotation describes (it may not exist on this machine).
    ``instances``: ground truth; ``scores`` are 1.0; ``class_ids`` are ``1 + index`` into
    ``class_names`` (0 stays free for background, as torchvision's training targets expect).
    ``class_names``: the dataset's classes, background not included.
    """

    image_path: Path
    instances: Instances
    class_names: tuple[str, ...]


def class_list(categories: Sequence[str]) -> tuple[str, ...]:
    """A model's ``categories`` (index = class id, background at 0, ``"N/A"`` gaps) -> the real class
    names in id order: what YOLO's ``classes.txt`` lists."""
    return tuple(c for c in categories if c not in NOT_CLASSES)
