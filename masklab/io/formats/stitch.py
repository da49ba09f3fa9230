"""3-D objects from 2-D planes (``--stitch-3d IOU``): the same object on neighbouring planes gets one id.

Like cellpose's ``stitch_threshold``: plane by plane, each object of plane ``z`` is matched to an object
of plane ``z - 1`` when their masks overlap by IoU >= ``iou`` (pairs taken best IoU first, each object
matched at most once); it then takes that object's id, else a new one. Objects are compared through the
planes' label images (the best-scoring object wins where two overlap). Without stitching every object of
every plane gets its own id, numbered through the stack.
"""

from __future__ import annotations

import numpy as np

from masklab.structures.instances import Instances

__all__ = ["LabelPainter", "paint_labels"]


def paint_labels(instances: Instances, ids: np.ndarray) -> np.ndarray:
    """uint32 (H, W): ``ids[k]`` where instance ``k`` is, 0 elsewhere; best score painted last."""
    out = np.zeros(instances.image_size, np.uint32)
    for k in np.argsort(instances.scores, kind="stable"):
        bitmap, x0, y0 = instances.mask_crop(int(k))
        out[y0 : y0 + bitmap.shape[0], x0 : x0 + bitmap.shape[1]][bitmap] = ids[k]
    return out


class LabelPainter:
    """Gives each plane's objects their stack-wide ids (stitched when ``iou`` is set) and paints the
    plane's label image. Call :meth:`plane` in plane order; a skipped plane breaks the chain."""

    def __init__(self, iou: float | None) -> None:
        if iou is not None and not 0 < iou <= 1:
            raise ValueError(f"stitch IoU must be in (0, 1], found {iou}")
        self.iou = iou
        self.next_id = 1
        self.prev: np.ndarray | None = None
        self.prev_index: int | None = None

    def _new(self, n: int) -> np.ndarray:
        ids = np.arange(self.next_id, self.next_id + n, dtype=np.uint32)
        self.next_id += n
        return ids

    def plane(self, instances: Instances, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(ids (N,) uint32, label image (H, W) uint32)`` for the plane ``index``."""
        n = len(instances)
        neighbour = self.prev is not None and self.prev_index == index - 1 and self.prev.shape == instances.image_size
        if self.iou is None or not neighbour or n == 0:
            ids = self._new(n)
        else:
            ids = self._match(instances)
        labels = paint_labels(instances, ids)
        self.prev, self.prev_index = labels, index
        return ids, labels

    def _match(self, instances: Instances) -> np.ndarray:
        prev = self.prev
        assert prev is not None
        local = np.arange(1, len(instances) + 1, dtype=np.uint32)  # plane-local ids, to measure what each keeps
        cur = paint_labels(instances, local)
        prev_area = np.bincount(prev.ravel())
        pairs = []
        for k, lid in enumerate(local):
            m = cur == lid
            area = int(m.sum())
            if not area:
                continue
            under = np.bincount(prev[m].ravel(), minlength=len(prev_area))
            for j in np.nonzero(under)[0]:
                if j == 0:
                    continue
                inter = int(under[j])
                iou = inter / (area + int(prev_area[j]) - inter)
                if iou >= self.iou:
                    pairs.append((iou, k, int(j)))
        ids = np.zeros(len(instances), np.uint32)
        used_j: set[int] = set()
        for _, k, j in sorted(pairs, reverse=True):
            if ids[k] or j in used_j:
                continue
            used_j.add(j)
            ids[k] = j
        for k in np.nonzero(ids == 0)[0]:
            ids[k] = self._new(1)[0]
        return ids
