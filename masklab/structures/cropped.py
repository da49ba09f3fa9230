"""`CroppedMasks`: N instance masks of one image, each kept as a bitmap cropped to its box.

A dense bool (N, H, W) array costs N x H x W bytes: 2000 objects on a 12000 x 12000 image would be
288 GB. Tiled inference (:mod:`masklab.inference.tiling`) therefore keeps every mask as a box-local
bitmap plus its offset, and :class:`~masklab.structures.instances.Instances` accepts a
``CroppedMasks`` as its ``masks`` field. It answers what the rest of masklab asks of ``masks`` without
building the dense array: ``len``, ``shape`` (N, H, W), ``masks[i]`` (one dense (H, W) mask, on demand),
``masks[index_array]`` (a ``CroppedMasks`` subset), areas, tight boxes, centroids, perimeters and COCO
RLE (computed from the crop, byte-identical to encoding the dense mask). ``np.asarray(masks)`` or
:meth:`CroppedMasks.dense` gives the dense array when it is wanted.

Conventions: ``bitmaps[i]`` bool (h_i, w_i); ``offsets`` int64 (N, 2) ``(x0, y0)``: the bitmap's top-left
pixel in the image; the bitmap lies inside the image (``x0 + w_i <= W``, ``y0 + h_i <= H``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from masklab.structures.masks import tight_box

__all__ = ["CroppedMasks", "crop_rle"]


class CroppedMasks:
    """Box-local bool bitmaps of N masks in an image of ``image_size`` = (H, W); see the module docstring.

    Example:
        >>> m = CroppedMasks([np.ones((2, 3), bool)], [(4, 1)], image_size=(5, 8))
        >>> m.shape, m.areas().tolist(), m.boxes().tolist()
        ((1, 5, 8), [6], [[4.0, 1.0, 7.0, 3.0]])
    """

    dtype = np.dtype(bool)
    ndim = 3

    def __init__(self, bitmaps: Sequence[np.ndarray], offsets: Any, *, image_size: tuple[int, int]) -> None:
        h, w = (int(v) for v in image_size)
        self.image_size = (h, w)
        self.bitmaps = tuple(np.ascontiguousarray(b, dtype=bool) for b in bitmaps)
        off = np.asarray(offsets, np.int64).reshape(-1, 2)
        if len(off) != len(self.bitmaps):
            raise ValueError(f"CroppedMasks: {len(self.bitmaps)} bitmaps but {len(off)} offsets")
        for b, (x0, y0) in zip(self.bitmaps, off.tolist()):
            if b.ndim != 2 or x0 < 0 or y0 < 0 or x0 + b.shape[1] > w or y0 + b.shape[0] > h:
                raise ValueError(f"CroppedMasks: a bitmap of shape {b.shape} at (x0, y0) = ({x0}, {y0}) "
                                 f"does not lie inside the ({h}, {w}) image")
        self.offsets = off

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def from_dense(cls, masks: np.ndarray, *, boxes: np.ndarray | None = None) -> CroppedMasks:
        """bool (N, H, W) -> each mask cropped to its tight box (an empty mask: a 0 x 0 bitmap at (0, 0)).
        ``boxes``: the tight boxes when the caller has them already (int (N, 4) ``x0, y0, x1, y1``, x1 and
        y1 exclusive, zeros for an empty mask, as :func:`~masklab.structures.masks.masks_to_boxes` gives)."""
        masks = np.asarray(masks, dtype=bool)
        if boxes is not None:
            boxes = [None if x1 <= x0 else (x0, y0, x1, y1) for x0, y0, x1, y1 in np.asarray(boxes, np.int64).tolist()]
        bitmaps, offsets = [], []
        for k, m in enumerate(masks):
            box = tight_box(m) if boxes is None else boxes[k]
            if box is None:
                bitmaps.append(np.zeros((0, 0), bool))
                offsets.append((0, 0))
                continue
            x0, y0, x1, y1 = box
            bitmaps.append(m[y0:y1, x0:x1])
            offsets.append((x0, y0))
        return cls(bitmaps, offsets, image_size=masks.shape[1:])

    @staticmethod
    def cat(items: Sequence[CroppedMasks | np.ndarray]) -> CroppedMasks:
        """Concatenate masks of one image size (dense arrays are cropped first)."""
        parts = [m if isinstance(m, CroppedMasks) else CroppedMasks.from_dense(m) for m in items]
        return CroppedMasks(sum((p.bitmaps for p in parts), ()), np.concatenate([p.offsets for p in parts]).reshape(-1, 2),
                            image_size=parts[0].image_size)

    # -- array-like protocol ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.bitmaps)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self), *self.image_size)

    @property
    def size(self) -> int:
        return len(self) * self.image_size[0] * self.image_size[1]

    @property
    def nbytes(self) -> int:
        """Bytes actually held (the bitmaps and offsets), not the dense size."""
        return sum(b.nbytes for b in self.bitmaps) + self.offsets.nbytes

    def __getitem__(self, item: Any) -> np.ndarray | CroppedMasks:
        """An int gives one dense bool (H, W) mask; a slice, index or bool array a ``CroppedMasks``."""
        if isinstance(item, (int, np.integer)):
            i = int(item)
            out = np.zeros(self.image_size, bool)
            b, (x0, y0) = self.bitmaps[i], self.offsets[i].tolist()
            out[y0 : y0 + b.shape[0], x0 : x0 + b.shape[1]] = b
            return out
        idx = np.arange(len(self))[item] if isinstance(item, slice) else np.asarray(item)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)
        return CroppedMasks([self.bitmaps[i] for i in idx], self.offsets[idx], image_size=self.image_size)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        d = self.dense()
        return d if dtype is None else d.astype(dtype)

    def __repr__(self) -> str:
        return f"CroppedMasks(num={len(self)}, image_size={self.image_size}, nbytes={self.nbytes})"

    def dense(self) -> np.ndarray:
        """bool (N, H, W): the full-image masks (N x H x W bytes)."""
        out = np.zeros(self.shape, bool)
        for i, (b, (x0, y0)) in enumerate(zip(self.bitmaps, self.offsets.tolist())):
            out[i, y0 : y0 + b.shape[0], x0 : x0 + b.shape[1]] = b
        return out

    def any(self, axis: int = 0) -> np.ndarray:
        """bool (H, W): the union of the masks (``axis`` must be 0, as for a dense (N, H, W) array)."""
        if axis != 0:
            raise ValueError("CroppedMasks.any: only axis=0 (the union over instances) is supported")
        out = np.zeros(self.image_size, bool)
        for b, (x0, y0) in zip(self.bitmaps, self.offsets.tolist()):
            out[y0 : y0 + b.shape[0], x0 : x0 + b.shape[1]] |= b
        return out

    def crop(self, i: int) -> tuple[np.ndarray, int, int]:
        """``(bitmap, x0, y0)`` of mask ``i``."""
        x0, y0 = self.offsets[i].tolist()
        return self.bitmaps[i], x0, y0

    # -- measurements (all from the crops) ----------------------------------------------------------
    def areas(self) -> np.ndarray:
        """int64 (N,): pixels in each mask."""
        return np.array([int(b.sum()) for b in self.bitmaps], np.int64)

    def boxes(self) -> np.ndarray:
        """float32 (N, 4): tight xyxy boxes (x2, y2 exclusive); an empty mask gives zeros."""
        from masklab.structures.masks import masks_to_boxes

        out = np.zeros((len(self), 4), np.float32)
        for i, (b, (x0, y0)) in enumerate(zip(self.bitmaps, self.offsets.tolist())):
            if b.any():
                out[i] = masks_to_boxes(b[None])[0] + np.array([x0, y0, x0, y0], np.float32)
        return out

    def centroids(self) -> np.ndarray:
        """float64 (N, 2): centroid (x, y) with pixel centres at +0.5; NaN for an empty mask."""
        out = np.full((len(self), 2), np.nan)
        for i, (b, (x0, y0)) in enumerate(zip(self.bitmaps, self.offsets.tolist())):
            ys, xs = np.nonzero(b)
            if xs.size:
                out[i] = (xs.mean() + x0 + 0.5, ys.mean() + y0 + 0.5)
        return out

    def perimeters(self) -> np.ndarray:
        """float64 (N,): contour length of each mask (as :func:`masklab.structures.masks.mask_perimeters`).

        The crop is padded by one pixel so that contours along its edge are found as in the full image."""
        from masklab.structures.masks import mask_perimeters

        return np.array([mask_perimeters(np.pad(b, 1)[None])[0] if b.any() else 0.0 for b in self.bitmaps])

    def to_rle(self) -> list[dict]:
        """N COCO compressed RLE dicts for the full image (``counts`` str), as
        :func:`masklab.structures.masks.encode_rle` of the dense masks gives, without building them."""
        return [crop_rle(b, x0, y0, self.image_size) for b, (x0, y0) in zip(self.bitmaps, self.offsets.tolist())]

    def resized(self, image_size: tuple[int, int]) -> CroppedMasks:
        """The masks scaled to an image of ``image_size`` (H, W) (nearest neighbour, each crop on its own)."""
        import cv2

        h, w = self.image_size
        nh, nw = (int(v) for v in image_size)
        sx, sy = nw / w, nh / h
        bitmaps, offsets = [], []
        for b, (x0, y0) in zip(self.bitmaps, self.offsets.tolist()):
            ax, ay = min(int(np.floor(x0 * sx)), nw - 1), min(int(np.floor(y0 * sy)), nh - 1)
            bx = min(max(int(np.ceil((x0 + b.shape[1]) * sx)), ax + 1), nw)
            by = min(max(int(np.ceil((y0 + b.shape[0]) * sy)), ay + 1), nh)
            if b.size == 0:
                bitmaps.append(np.zeros((0, 0), bool))
                offsets.append((0, 0))
                continue
            r = cv2.resize(b.view(np.uint8), (bx - ax, by - ay), interpolation=cv2.INTER_NEAREST).astype(bool)
            bitmaps.append(r)
            offsets.append((ax, ay))
        return CroppedMasks(bitmaps, offsets, image_size=(nh, nw))


def crop_rle(bitmap: np.ndarray, x0: int, y0: int, image_size: tuple[int, int]) -> dict:
    """COCO compressed RLE (``counts`` str) of the full (H, W) mask that is ``bitmap`` at ``(x0, y0)``
    and empty elsewhere; works in the crop's size, never the image's."""
    from pycocotools import mask as mask_utils

    h, w = image_size
    b = np.asarray(bitmap, bool)
    if b.size == 0 or not b.any():
        counts = [h * w]
    else:
        # COCO RLE runs over the image column by column: pad each crop column with a 0 above and below,
        # and the run starts/ends are where the padded column changes value.
        padded = np.zeros((b.shape[0] + 2, b.shape[1]), np.int8)
        padded[1:-1] = b
        d = np.diff(padded, axis=0)  # (h_i + 1, w_i): +1 starts a run at row r, -1 ends it at row r
        cols, rows = np.nonzero(d.T)  # column-major order
        flat = (x0 + cols).astype(np.int64) * h + (y0 + rows)
        # A run ending at the bottom of one column and one starting at the top of the next touch: join them.
        starts_ends = flat.reshape(-1, 2)
        keep = np.ones(len(flat), bool)
        touching = np.flatnonzero(starts_ends[1:, 0] == starts_ends[:-1, 1])
        keep[2 * touching + 1] = False
        keep[2 * touching + 2] = False
        edges = np.concatenate([[0], flat[keep], [h * w]])
        counts = np.diff(edges).tolist()
        if counts[-1] == 0:  # a mask that ends at the last pixel: no empty run after it (as pycocotools)
            counts.pop()
    rle = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    return {"size": [int(h), int(w)], "counts": rle["counts"].decode("ascii")}
