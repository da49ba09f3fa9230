"""supervision (roboflow) ``sv.Detections`` <-> :class:`Instances`.

``to_supervision(inst)`` gives ``xyxy`` float32 (N, 4) (masklab's boxes as they are: x2, y2 are the
right/bottom pixel edges), ``mask`` bool (N, H, W), ``confidence`` float32 (N,), ``class_id`` int (N,)
(the model's class ids) and ``data["class_name"]`` (N,) str, supervision's own key for class names, so
its annotators label boxes with names. ``from_supervision`` is the inverse; it needs masks (an
``Instances`` always has them): ``box_masks=True`` fills the boxes for box-only detections.

Example:
    >>> import supervision as sv  # doctest: +SKIP
    >>> det = to_supervision(seg("photo.jpg"))  # doctest: +SKIP
    >>> sv.MaskAnnotator().annotate(image.copy(), det)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from masklab.optional import require
from masklab.structures.instances import Instances

__all__ = ["to_supervision", "from_supervision", "CLASS_NAME_KEY"]

#: supervision's ``Detections.data`` key for class names (``supervision.config.CLASS_NAME_DATA_FIELD``)
CLASS_NAME_KEY = "class_name"


def to_supervision(instances: Instances) -> Any:
    """:class:`Instances` -> ``supervision.Detections`` (dense masks; see the module docstring)."""
    sv = require("supervision")
    dense = instances.dense()
    return sv.Detections(
        xyxy=np.asarray(instances.boxes, np.float32).reshape(-1, 4),
        mask=np.asarray(dense.masks, bool),
        confidence=np.asarray(instances.scores, np.float32),
        class_id=np.asarray(instances.class_ids, np.int64),
        data={CLASS_NAME_KEY: np.array(instances.labels, dtype=str).reshape(-1)},
    )


def from_supervision(
    detections: Any,
    *,
    image_size: tuple[int, int] | None = None,
    class_names: Sequence[str] | None = None,
    box_masks: bool = False,
) -> Instances:
    """``supervision.Detections`` -> :class:`Instances`.

    Labels come from ``data["class_name"]``, else ``class_names[class_id]``, else ``"class_<id>"``;
    scores from ``confidence`` (1.0 where None); class ids from ``class_id`` (0 where None).
    ``image_size`` ``(H, W)``: required when the detections have no masks (then ``box_masks=True``
    draws each box as its mask); default: the masks' size.
    """
    xyxy = np.asarray(detections.xyxy, np.float32).reshape(-1, 4)
    n = len(xyxy)
    masks = detections.mask
    if masks is None:
        if not box_masks or image_size is None:
            raise ValueError("from_supervision: these detections have no masks; pass image_size=(H, W) and "
                             "box_masks=True to use the boxes as masks")
        masks = _box_masks(xyxy, image_size)
    masks = np.asarray(masks, bool)
    size = tuple(image_size) if image_size is not None else masks.shape[1:]
    ids = np.zeros(n, np.int64) if detections.class_id is None else np.asarray(detections.class_id, np.int64)
    data = detections.data or {}
    if CLASS_NAME_KEY in data:
        labels = [str(v) for v in np.asarray(data[CLASS_NAME_KEY]).reshape(-1)]
    elif class_names is not None:
        labels = [class_names[i] for i in ids.tolist()]
    else:
        labels = [f"class_{i}" for i in ids.tolist()]
    scores = np.ones(n, np.float32) if detections.confidence is None else np.asarray(detections.confidence, np.float32)
    return Instances(boxes=xyxy, masks=masks.reshape(n, *size), scores=scores, class_ids=ids, labels=labels, image_size=size)


def _box_masks(xyxy: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    h, w = image_size
    out = np.zeros((len(xyxy), h, w), bool)
    for k, (x1, y1, x2, y2) in enumerate(np.round(xyxy).astype(int)):
        out[k, max(y1, 0) : max(y2, 0), max(x1, 0) : max(x2, 0)] = True
    return out
