"""`Instances`: the one result type of masklab.

Every model, backend and reader produces an `Instances`; every writer, visualiser and metric consumes
one. Conversions to other shapes (the matterport dict, COCO JSON/RLE, polygons, label maps, CSV) live at
the edges (`masklab.structures.masks`, `masklab.export`), not here.

Fields (all numpy, N = number of instances, H, W = original image height and width):

- ``boxes``: float32 (N, 4), ``x1, y1, x2, y2`` in pixels of the original image (x2, y2 are the
  right/bottom edges, so a box covering one pixel at (0, 0) is ``[0, 0, 1, 1]``).
- ``masks``: bool (N, H, W), ``True`` inside the object: a dense numpy array (the default, and what
  every untiled run gives), or a :class:`~masklab.structures.cropped.CroppedMasks` (box-local bitmaps,
  same shape and indexing, dense on demand) where the dense array would be too large: tiled inference
  on huge images returns those (:meth:`Instances.dense` / :meth:`Instances.cropped` convert).
- ``scores``: float32 (N,), in [0, 1] for predictions; 1.0 for ground truth.
- ``class_ids``: int64 (N,), the model's (or dataset's) own category ids.
- ``labels``: tuple of N str, the category names.
- ``image_size``: ``(H, W)``.
- ``quality`` (optional): float32 (N,) in [0, 1], how good each *mask* is (``scores`` rate the box's
  class): training-free from the mask head's probabilities (:mod:`masklab.structures.quality`) or a
  MaskIoU head's predicted IoU; None where unknown (ground truth, results read from files without it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from masklab.structures.cropped import CroppedMasks

__all__ = ["Instances"]


def _as_array(value: Any, dtype: np.dtype, name: str, ndim: int) -> np.ndarray:
    arr = np.asarray(value)
    if arr.size == 0:
        arr = arr.reshape((0,) + arr.shape[1:] if arr.ndim == ndim else (0,) * ndim)
    if arr.ndim != ndim:
        raise ValueError(f"Instances.{name}: expected {ndim} dimensions, found shape {arr.shape}")
    if dtype == np.bool_ and arr.dtype != np.bool_:
        raise TypeError(f"Instances.{name}: expected a bool array, found dtype {arr.dtype}")
    return arr.astype(dtype, copy=False)


@dataclass(frozen=True, eq=False)
class Instances:
    """Per-object results for one image; see the module docstring for every field's dtype and shape.

    Example:
        >>> import numpy as np
        >>> m = np.zeros((1, 4, 6), bool); m[0, 1:3, 2:5] = True
        >>> inst = Instances(boxes=[[2, 1, 5, 3]], masks=m, scores=[0.9], class_ids=[1],
        ...                  labels=["person"], image_size=(4, 6))
        >>> len(inst), inst.areas().tolist()
        (1, [6])
    """

    boxes: np.ndarray
    masks: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    labels: tuple[str, ...]
    image_size: tuple[int, int]
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    quality: np.ndarray | None = None

    def __post_init__(self) -> None:
        h, w = (int(v) for v in self.image_size)
        if h <= 0 or w <= 0:
            raise ValueError(f"Instances.image_size: expected positive (H, W), found {self.image_size}")
        object.__setattr__(self, "image_size", (h, w))
        boxes = _as_array(self.boxes, np.float32, "boxes", 2)
        if boxes.shape[1:] != (4,) and boxes.shape[0] != 0:
            raise ValueError(f"Instances.boxes: expected shape (N, 4), found {boxes.shape}")
        boxes = boxes.reshape(-1, 4)
        if isinstance(self.masks, CroppedMasks):
            masks = self.masks
        else:
            masks = np.asarray(self.masks)
            if masks.size == 0:
                masks = np.zeros((0, h, w), dtype=bool)
            masks = _as_array(masks, np.bool_, "masks", 3)
        if masks.shape[1:] != (h, w):
            raise ValueError(f"Instances.masks: expected shape (N, {h}, {w}), found {masks.shape}")
        scores = _as_array(self.scores, np.float32, "scores", 1)
        class_ids = _as_array(self.class_ids, np.int64, "class_ids", 1)
        labels = tuple(str(x) for x in self.labels)
        n = len(boxes)
        lengths = {"masks": len(masks), "scores": len(scores), "class_ids": len(class_ids), "labels": len(labels)}
        lengths.update({f"extra[{k!r}]": len(v) for k, v in self.extra.items()})
        quality = None if self.quality is None else _as_array(self.quality, np.float32, "quality", 1)
        if quality is not None:
            lengths["quality"] = len(quality)
        bad = {k: v for k, v in lengths.items() if v != n}
        if bad:
            raise ValueError(f"Instances: every field needs {n} entries (as boxes has); found {bad}")
        for name, value in (("boxes", boxes), ("masks", masks), ("scores", scores), ("class_ids", class_ids)):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "quality", quality)
        object.__setattr__(self, "extra", {k: np.asarray(v) for k, v in self.extra.items()})

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def empty(cls, image_size: tuple[int, int]) -> Instances:
        """No instances, for an image of ``image_size`` = (H, W)."""
        h, w = image_size
        return cls(
            boxes=np.zeros((0, 4), np.float32),
            masks=np.zeros((0, h, w), bool),
            scores=np.zeros((0,), np.float32),
            class_ids=np.zeros((0,), np.int64),
            labels=(),
            image_size=(h, w),
        )

    @classmethod
    def from_masks(
        cls,
        masks: np.ndarray,
        *,
        class_ids: Sequence[int],
        labels: Sequence[str],
        scores: Sequence[float] | None = None,
    ) -> Instances:
        """Build from bool masks (N, H, W); boxes are the tight xyxy box of each mask (empty mask: zeros)."""
        masks = np.asarray(masks, dtype=bool)
        if masks.ndim != 3:
            raise ValueError(f"from_masks: expected bool masks (N, H, W), found shape {masks.shape}")
        from masklab.structures.masks import masks_to_boxes

        n = len(masks)
        return cls(
            boxes=masks_to_boxes(masks),
            masks=masks,
            scores=np.ones(n, np.float32) if scores is None else scores,
            class_ids=class_ids,
            labels=labels,
            image_size=masks.shape[1:],
        )

    # -- container protocol -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, item: Any) -> Instances:
        """Select with an int, a slice, an index array or a bool array of length N."""
        if isinstance(item, (int, np.integer)):
            idx = np.array([int(item)])
            if not -len(self) <= idx[0] < len(self):
                raise IndexError(f"Instances index {item} out of range for {len(self)} instances")
        elif isinstance(item, slice):
            idx = np.arange(len(self))[item]
        else:
            idx = np.asarray(item)
            if idx.dtype == bool:
                if idx.shape != (len(self),):
                    raise IndexError(f"bool selector needs shape ({len(self)},), found {idx.shape}")
                idx = np.nonzero(idx)[0]
            elif idx.size == 0:
                idx = idx.astype(np.int64)
            elif not np.issubdtype(idx.dtype, np.integer):
                raise IndexError(f"Instances: select with int, slice, int or bool array; found {idx.dtype}")
        return Instances(
            boxes=self.boxes[idx],
            masks=self.masks[idx],
            scores=self.scores[idx],
            class_ids=self.class_ids[idx],
            labels=tuple(self.labels[i] for i in idx),
            image_size=self.image_size,
            extra={k: v[idx] for k, v in self.extra.items()},
            quality=None if self.quality is None else self.quality[idx],
        )

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        h, w = self.image_size
        counts = self.counts()
        summary = ", ".join(f"{k}: {v}" for k, v in counts.items()) or "none"
        return f"Instances(num={len(self)}, image_size=({h}, {w}), classes={{{summary}}})"

    def _repr_html_(self, max_rows: int = 20) -> str:
        """Jupyter's view: a compact table (label, score, box, area) of the first ``max_rows`` objects."""
        from html import escape

        h, w = self.image_size
        head = f"<b>Instances</b>: {len(self)} objects, image {h}&#215;{w}"
        if not len(self):
            return f"<div>{head}</div>"
        areas = self.areas()
        rows = "".join(
            f"<tr><td>{k}</td><td>{escape(self.labels[k])}</td><td>{float(self.scores[k]):.3f}</td>"
            f"<td>{', '.join(f'{float(v):.1f}' for v in self.boxes[k])}</td><td>{int(areas[k])}</td></tr>"
            for k in range(min(len(self), max_rows))
        )
        more = f"<tr><td colspan='5'>&#8230; {len(self) - max_rows} more</td></tr>" if len(self) > max_rows else ""
        cols = "".join(f"<th>{c}</th>" for c in ("#", "label", "score", "box x1, y1, x2, y2", "area px"))
        return f"<div>{head}<table><thead><tr>{cols}</tr></thead><tbody>{rows}{more}</tbody></table></div>"

    @staticmethod
    def cat(items: Sequence[Instances]) -> Instances:
        """Concatenate instances of the same image size."""
        if not items:
            raise ValueError("Instances.cat needs at least one Instances")
        sizes = {i.image_size for i in items}
        if len(sizes) != 1:
            raise ValueError(f"Instances.cat: all image sizes must match, found {sorted(sizes)}")
        keys = set(items[0].extra)
        cropped = any(isinstance(i.masks, CroppedMasks) for i in items)
        return Instances(
            boxes=np.concatenate([i.boxes for i in items]),
            masks=CroppedMasks.cat([i.masks for i in items]) if cropped else np.concatenate([i.masks for i in items]),
            scores=np.concatenate([i.scores for i in items]),
            class_ids=np.concatenate([i.class_ids for i in items]),
            labels=sum((i.labels for i in items), ()),
            image_size=items[0].image_size,
            extra={k: np.concatenate([i.extra[k] for i in items]) for k in keys if all(k in i.extra for i in items)},
            # known for all or for none: a part without quality makes the whole unknown (no made-up values)
            quality=np.concatenate([i.quality for i in items]) if all(i.quality is not None for i in items) else None,
        )

    # -- mask storage -------------------------------------------------------------------------------
    @property
    def is_cropped(self) -> bool:
        """True when ``masks`` is a :class:`~masklab.structures.cropped.CroppedMasks`."""
        return isinstance(self.masks, CroppedMasks)

    def dense(self) -> Instances:
        """The same instances with a dense bool (N, H, W) ``masks`` array (N x H x W bytes)."""
        return self._with_masks(np.asarray(self.masks)) if self.is_cropped else self

    def cropped(self) -> Instances:
        """The same instances with :class:`~masklab.structures.cropped.CroppedMasks` masks."""
        return self if self.is_cropped else self._with_masks(CroppedMasks.from_dense(self.masks))

    def mask_crop(self, i: int) -> tuple[np.ndarray, int, int]:
        """``(bitmap, x0, y0)``: mask ``i`` cropped to its pixels' tight box (bool (h, w)), at ``(x0, y0)``."""
        return self.masks.crop(i) if self.is_cropped else CroppedMasks.from_dense(self.masks[i : i + 1]).crop(0)

    def resized(self, image_size: tuple[int, int]) -> Instances:
        """The instances scaled to an image of ``image_size`` (H, W): boxes scaled, masks resized (nearest)
        per crop; the result has cropped masks (overlays of huge images are drawn from it)."""
        nh, nw = (int(v) for v in image_size)
        h, w = self.image_size
        scale = np.array([nw / w, nh / h, nw / w, nh / h], np.float32)
        return dataclasses.replace(self, boxes=self.boxes * scale, masks=self.cropped().masks.resized((nh, nw)),
                                   image_size=(nh, nw))

    def _with_masks(self, masks) -> Instances:
        return dataclasses.replace(self, masks=masks)

    # -- selection helpers --------------------------------------------------------------------------
    def filter(self, *, min_score: float | None = None, classes: Sequence[str] | None = None,
               min_quality: float | None = None) -> Instances:
        """Keep instances with ``score >= min_score``, ``quality >= min_quality`` and (if given) a label in
        ``classes``. ``min_quality`` on instances without ``quality`` is an error (nothing to filter on)."""
        keep = np.ones(len(self), bool)
        if min_score is not None:
            keep &= self.scores >= min_score
        if min_quality is not None:
            if self.quality is None:
                raise ValueError("Instances.filter(min_quality=...): these instances carry no quality")
            keep &= self.quality >= min_quality
        if classes is not None:
            wanted = set(classes)
            keep &= np.array([lab in wanted for lab in self.labels], bool)
        return self[keep]

    def counts(self) -> dict[str, int]:
        """Number of instances per label, in order of first appearance."""
        out: dict[str, int] = {}
        for lab in self.labels:
            out[lab] = out.get(lab, 0) + 1
        return out

    # -- measurements -------------------------------------------------------------------------------
    def areas(self) -> np.ndarray:
        """int64 (N,): mask area in pixels."""
        if self.is_cropped:
            return self.masks.areas()
        return self.masks.sum(axis=(1, 2), dtype=np.int64)

    def centroids(self) -> np.ndarray:
        """float64 (N, 2): mask centroid ``(x, y)`` in pixel coordinates (pixel centres at +0.5); NaN if empty."""
        from masklab.structures.masks import mask_centroids

        return self.masks.centroids() if self.is_cropped else mask_centroids(self.masks)

    def perimeters(self) -> np.ndarray:
        """float64 (N,): length in pixels of every outer and hole contour of each mask (OpenCV)."""
        from masklab.structures.masks import mask_perimeters

        return self.masks.perimeters() if self.is_cropped else mask_perimeters(self.masks)

    def measurements(self) -> list[dict[str, Any]]:
        """One dict per instance: id, label, class_id, score, quality (None when unknown), area_px,
        perimeter_px, centroid_xy, bbox_xyxy.

        An empty mask (a box whose mask fell below the threshold) has ``centroid_xy`` ``[None, None]``:
        JSON has no NaN, and ``null`` is what the web API and every strict parser expect.
        """
        areas, cents, perims = self.areas(), self.centroids(), self.perimeters()
        return [
            {
                "id": i,
                "label": self.labels[i],
                "class_id": int(self.class_ids[i]),
                "score": float(self.scores[i]),
                "quality": None if self.quality is None else float(self.quality[i]),
                "area_px": int(areas[i]),
                "perimeter_px": float(perims[i]),
                "centroid_xy": [float(v) if np.isfinite(v) else None for v in cents[i]],
                "bbox_xyxy": [float(v) for v in self.boxes[i]],
            }
            for i in range(len(self))
        ]

    # -- conversions at the edges -------------------------------------------------------------------
    def to_coco(self, image_id: int | str, *, category_ids: dict[str, int] | None = None) -> list[dict]:
        """COCO results entries (``image_id, category_id, bbox [x, y, w, h], score, segmentation`` RLE).

        ``category_ids`` maps label to dataset category id; by default the model's own ``class_ids``.
        Boxes are rounded to 1/1000 pixel and scores to 6 decimals, as in :meth:`to_dict` (the float32
        values would otherwise print as ``99.48799896240234``).
        """
        from masklab.structures.masks import encode_rle

        rles = self.masks.to_rle() if self.is_cropped else encode_rle(self.masks)
        out = []
        for i in range(len(self)):
            x1, y1, x2, y2 = (float(v) for v in self.boxes[i])
            cat = category_ids[self.labels[i]] if category_ids is not None else int(self.class_ids[i])
            out.append(
                {
                    "image_id": image_id,
                    "category_id": cat,
                    "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                    "score": round(float(self.scores[i]), 6),
                    "segmentation": rles[i],
                }
            )
            if self.quality is not None:  # masklab's mask quality; other COCO tools ignore the key
                out[-1]["quality"] = float(self.quality[i])
        return out

    def to_mrcnn(self, class_names: Sequence[str]) -> dict[str, np.ndarray]:
        """The matterport tutorial's result dict.

        Returns ``rois`` int32 (N, 4) ``y1, x1, y2, x2`` pixels (y2, x2 exclusive), ``masks`` bool
        (H, W, N), ``class_ids`` int32 (N,) indexing ``class_names`` (``class_names[0] == "BG"``),
        ``scores`` float32 (N,).
        """
        index = {name: i for i, name in enumerate(class_names)}
        missing = sorted({lab for lab in self.labels if lab not in index})
        if missing:
            raise KeyError(f"to_mrcnn: labels {missing} are not in class_names ({len(class_names)} names)")
        b = np.round(self.boxes).astype(np.int32).reshape(-1, 4)
        rois = b[:, [1, 0, 3, 2]] if len(b) else np.zeros((0, 4), np.int32)
        h, w = self.image_size
        masks = np.ascontiguousarray(np.asarray(self.masks).transpose(1, 2, 0)) if len(self) else np.zeros((h, w, 0), bool)
        return {
            "rois": rois,
            "masks": masks,
            "class_ids": np.array([index[lab] for lab in self.labels], np.int32),
            "scores": self.scores.astype(np.float32),
        }

    def to_dict(self) -> dict[str, Any]:
        """The per-image JSON's ``instances`` list (see README, "JSON format")."""
        from masklab.structures.masks import encode_rle

        rles = self.masks.to_rle() if self.is_cropped else encode_rle(self.masks)
        meas = self.measurements()
        out = []
        for m, rle in zip(meas, rles):
            out.append(
                {
                    "id": m["id"],
                    "label": m["label"],
                    "class_id": m["class_id"],
                    "score": round(m["score"], 6),
                    "quality": None if m["quality"] is None else round(m["quality"], 6),
                    "bbox_xyxy": [round(v, 3) for v in m["bbox_xyxy"]],
                    "area_px": m["area_px"],
                    "perimeter_px": round(m["perimeter_px"], 3),
                    "centroid_xy": [None if v is None else round(v, 3) for v in m["centroid_xy"]],
                    "rle": rle,
                }
            )
        return out

    @classmethod
    def from_dict(cls, instances: Sequence[dict], image_size: tuple[int, int]) -> Instances:
        """Inverse of :meth:`to_dict` (masks decoded from RLE; measurements recomputed, not read)."""
        from masklab.structures.masks import decode_rle

        h, w = image_size
        masks = decode_rle([d["rle"] for d in instances], (h, w))
        qualities = [d.get("quality") for d in instances]
        return cls(
            boxes=np.array([d["bbox_xyxy"] for d in instances], np.float32).reshape(-1, 4),
            masks=masks,
            scores=[d["score"] for d in instances],
            class_ids=[d["class_id"] for d in instances],
            labels=[d["label"] for d in instances],
            image_size=(h, w),
            quality=None if not qualities or any(q is None for q in qualities) else qualities,
        )
