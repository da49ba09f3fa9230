"""The synthetic "shapes" dataset (squares, circles, triangles on coloured backgrounds), in COCO format.

The classic first dataset of the Mask R-CNN tutorials: every image has a plain random background and
1-4 solid shapes of random colour, size and position; a shape drawn later hides the parts of earlier
ones it covers, and the masks are the *visible* parts. Fully determined by ``seed``.

    >>> write_shapes("data/shapes/train", n=500, seed=0)        # doctest: +SKIP
    # data/shapes/train/annotations.json + data/shapes/train/images/000001.png ...
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from masklab.errors import UsageError
from masklab.io.atomic import atomic_save_image, atomic_write_json
from masklab.structures.cropped import CroppedMasks
from masklab.structures.masks import encode_rle, masks_to_boxes

__all__ = ["SHAPE_CLASSES", "ShapesScene", "random_scene", "write_shapes", "large_scene", "write_large_shapes"]

#: Category names, in category-id order (ids 1, 2, 3).
SHAPE_CLASSES = ("square", "circle", "triangle")


@dataclass(frozen=True)
class ShapesScene:
    """One generated image: ``image`` uint8 (H, W, 3) RGB; ``masks`` bool (N, H, W) visible parts;
    ``classes`` tuple of N names from :data:`SHAPE_CLASSES`."""

    image: np.ndarray
    masks: np.ndarray
    classes: tuple[str, ...]


def _draw(shape: str, canvas: np.ndarray, x: int, y: int, s: int, color: tuple[int, ...]) -> None:
    import cv2

    if shape == "square":
        cv2.rectangle(canvas, (x - s, y - s), (x + s, y + s), color, -1)
    elif shape == "circle":
        cv2.circle(canvas, (x, y), s, color, -1)
    else:  # an upright equilateral-ish triangle centred on (x, y)
        pts = np.array([[x, y - s], [x - int(s / np.sin(np.pi / 3)), y + s], [x + int(s / np.sin(np.pi / 3)), y + s]], np.int32)
        cv2.fillPoly(canvas, [pts.reshape(-1, 1, 2)], color)


def random_scene(rng: np.random.Generator, *, size: int = 128, max_shapes: int = 4) -> ShapesScene:
    """One scene of ``size`` x ``size`` pixels with 1..``max_shapes`` shapes (each visible part >= 20 px)."""
    bg = tuple(int(v) for v in rng.integers(0, 256, 3))
    image = np.empty((size, size, 3), np.uint8)
    image[:] = bg
    masks: list[np.ndarray] = []
    classes: list[str] = []
    buffer = max(4, size // 16)
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        shape = SHAPE_CLASSES[int(rng.integers(0, len(SHAPE_CLASSES)))]
        # A colour far enough from the background that the shape is visible at all.
        while True:
            color = tuple(int(v) for v in rng.integers(0, 256, 3))
            if sum(abs(a - b) for a, b in zip(color, bg)) > 120:
                break
        s = int(rng.integers(size // 16 + 2, size // 4))
        x = int(rng.integers(buffer, size - buffer))
        y = int(rng.integers(buffer, size - buffer))
        m = np.zeros((size, size), np.uint8)
        _draw(shape, m, x, y, s, (1,))
        m = m.astype(bool)
        _draw(shape, image, x, y, s, color)
        masks = [old & ~m for old in masks]  # the new shape hides what it covers
        masks.append(m)
        classes.append(shape)
    keep = [i for i, m in enumerate(masks) if m.sum() >= 20]
    return ShapesScene(image, np.stack([masks[i] for i in keep]) if keep else np.zeros((0, size, size), bool),
                       tuple(classes[i] for i in keep))


def large_scene(rng: np.random.Generator, *, height: int, width: int, n_shapes: int, smallest: int = 10,
                largest: int = 31) -> ShapesScene:
    """A large canvas (one plain background) with ``n_shapes`` shapes of the demo model's training size
    (half-size ``smallest``..``largest`` px), placed without overlaps at random positions, so many of
    them cross the borders of any tile grid. ``masks`` is a
    :class:`~masklab.structures.cropped.CroppedMasks` (a dense (N, H, W) array would not fit for
    huge canvases). Raises :class:`~masklab.errors.UsageError` when the shapes do not fit."""
    bg = tuple(int(v) for v in rng.integers(0, 256, 3))
    image = np.empty((height, width, 3), np.uint8)
    image[:] = bg
    taken = np.zeros((height, width), bool)
    bitmaps, offsets, classes = [], [], []
    tries = 0
    while len(classes) < n_shapes:
        tries += 1
        if tries > 50 * n_shapes:
            raise UsageError(f"{n_shapes} shapes do not fit on a {width}x{height} canvas; use fewer or a larger canvas")
        s = int(rng.integers(smallest, largest + 1))
        r = int(np.ceil(s / np.sin(np.pi / 3))) + 2  # the triangle's half-width, plus a margin
        x, y = int(rng.integers(r, width - r)), int(rng.integers(r, height - r))
        if taken[y - r : y + r, x - r : x + r].any():
            continue
        taken[y - r : y + r, x - r : x + r] = True
        while True:
            color = tuple(int(v) for v in rng.integers(0, 256, 3))
            if sum(abs(a - b) for a, b in zip(color, bg)) > 120:
                break
        shape = SHAPE_CLASSES[int(rng.integers(0, len(SHAPE_CLASSES)))]
        local = np.zeros((2 * r, 2 * r), np.uint8)
        _draw(shape, local, r, r, s, (1,))
        region = image[y - r : y + r, x - r : x + r]
        region[local.astype(bool)] = color
        bitmaps.append(local.astype(bool))  # visible = whole: shapes never overlap
        offsets.append((x - r, y - r))
        classes.append(shape)
    tight = [CroppedMasks.from_dense(b[None]) for b in bitmaps]  # each shape's own tight box
    masks = CroppedMasks([t.bitmaps[0] for t in tight],
                         [(ox + int(t.offsets[0, 0]), oy + int(t.offsets[0, 1])) for t, (ox, oy) in zip(tight, offsets)],
                         image_size=(height, width))
    return ShapesScene(image, masks, tuple(classes))


def write_large_shapes(out: str | os.PathLike, *, n: int, height: int, width: int, n_shapes: int, seed: int = 0) -> Path:
    """Write ``n`` :func:`large_scene` canvases as ``out/images/NNNNNN.png`` and ``out/annotations.json``
    (COCO, masks as RLE computed from the crops). Returns the path of ``annotations.json``."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    cats = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPE_CLASSES)]
    cat_id = {c["name"]: c["id"] for c in cats}
    images, anns = [], []
    for image_id in range(1, n + 1):
        scene = large_scene(rng, height=height, width=width, n_shapes=n_shapes)
        name = f"images/{image_id:06d}.png"
        atomic_save_image(out / name, scene.image)
        images.append({"id": image_id, "file_name": name, "height": height, "width": width})
        for rle, box, cls, area in zip(scene.masks.to_rle(), scene.masks.boxes(), scene.classes, scene.masks.areas()):
            x1, y1, x2, y2 = (float(v) for v in box)
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat_id[cls], "segmentation": rle,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float(area), "iscrowd": 0})
    doc = {"info": {"description": f"masklab large shapes canvases (n={n}, {width}x{height}, {n_shapes} shapes, seed={seed})"},
           "images": images, "annotations": anns, "categories": cats}
    return atomic_write_json(out / "annotations.json", doc)


def write_shapes(out: str | os.PathLike, *, n: int = 500, size: int = 128, seed: int = 0, progress: bool = False) -> Path:
    """Write ``n`` scenes as ``out/images/NNNNNN.png`` and ``out/annotations.json`` (COCO, masks as RLE).

    Returns the path of ``annotations.json``.
    """
    if n <= 0:
        raise UsageError(f"--n must be a positive number of images, found {n}")
    if size < 32:
        raise UsageError(f"--size must be at least 32 pixels, found {size}")
    out = Path(out)
    rng = np.random.default_rng(seed)
    cats = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPE_CLASSES)]
    cat_id = {c["name"]: c["id"] for c in cats}
    images, anns = [], []
    it = range(1, n + 1)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="shapes", unit="img")
    for image_id in it:
        scene = random_scene(rng, size=size)
        name = f"images/{image_id:06d}.png"
        atomic_save_image(out / name, scene.image)
        images.append({"id": image_id, "file_name": name, "height": size, "width": size})
        boxes = masks_to_boxes(scene.masks)
        for rle, box, cls, m in zip(encode_rle(scene.masks), boxes, scene.classes, scene.masks):
            x1, y1, x2, y2 = (float(v) for v in box)
            anns.append({
                "id": len(anns) + 1,
                "image_id": image_id,
                "category_id": cat_id[cls],
                "segmentation": rle,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": float(m.sum()),
                "iscrowd": 0,
            })
    doc = {
        "info": {"description": f"masklab synthetic shapes (n={n}, size={size}, seed={seed})"},
        "images": images,
        "annotations": anns,
        "categories": cats,
    }
    return atomic_write_json(out / "annotations.json", doc)
