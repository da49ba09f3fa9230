"""Tiled inference for large images with small objects: tile grid, batched tiles, merging across borders.

Mask R-CNN resizes the whole image to its input size (800 px short side for the COCO models, 128 for
the shipped shapes model), so objects of a few tens of pixels in a large image vanish. Here the image
is cut into overlapping tiles of ``tile`` original-image pixels, the tiles go through the runtime in
batches, and the detections are merged on their masks:

- every detection keeps its mask cropped to its pixels' box (a box-local bitmap), never a full-image
  array, so memory grows with the objects' area, not with N x H x W;
- two detections of the same class are one object when, *inside the window both of them were seen
  in* (the overlap of their tiles; the tile itself for a tile vs the whole-image pass), their masks'
  intersection over the smaller of the two is at least :data:`MATCH_IOS` (0.5). An object cut by a
  tile border has, in the overlap band, the same pixels in both tiles, so its parts match even when
  each part alone is mostly outside the band (a plain intersection-over-smaller would miss those);
  a duplicate seen whole by two tiles matches everywhere;
- matches are merged transitively (an object across a tile corner is seen by four tiles): the union
  of the parts' masks, the best score, the box recomputed from the merged mask.

``max_detections`` and ``score_thresh`` apply per tile (the model applies them); the merged total is
not capped. A detection whose mask is empty (a box without pixels) is dropped: it cannot be merged.
The optional whole-image pass (``tile_full_pass``) runs on the image scaled to at most
:data:`FULL_PASS_SIDE` pixels (the model resizes it smaller still) and its masks are scaled back per crop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from masklab.structures.cropped import CroppedMasks
from masklab.structures.detections import Detections
from masklab.structures.masks import tight_box
from masklab.structures.quality import detection_quality

__all__ = ["tile_windows", "resolve_tile", "predict_tiled", "merge_parts", "Parts", "MATCH_IOS", "FULL_PASS_SIDE"]

#: intersection over the smaller mask, inside the common window, at which two detections are one object
MATCH_IOS = 0.5
#: the whole-image pass runs on the image scaled so that its longer side is at most this (pixels)
FULL_PASS_SIDE = 2048
#: tiles per runtime call (CUDA batches well; on the CPU a batch gains little and costs memory)
TILE_BATCH = {"cpu": 2, "cuda": 16}


def resolve_tile(tile, *, image_hw: tuple[int, int], min_size: int, max_size: int,
                 native_side: float | None = None) -> tuple[int, int] | None:
    """The tile ``(w, h)`` in pixels for one image, or None for one whole-image pass.

    ``tile``: None, ``(w, h)`` or ``"auto"`` (:class:`~masklab.settings.InferenceSettings` parsed it).
    ``auto``: square tiles of the model's input size (``min_size``, at most ``max_size``: the scale the
    model was trained at, so objects keep their size); None when the model would not shrink the image
    (its shorter side <= ``min_size`` and longer side <= ``max_size``). ``native_side``: for a model
    whose card records its training data (``data_stats``), the tile side at which objects appear as large
    as in training (the training images' median shorter side, scaled by a changed ``min_size``); then
    ``auto`` uses square tiles of that side, and no tiling for an image not larger than one. A given size
    larger than the image is clipped to it."""
    h, w = image_hw
    if tile is None:
        return None
    if tile == "auto":
        if native_side:
            side = max(16, int(round(native_side)))
            if min(h, w) <= side and max(h, w) <= side * max_size / min_size:
                return None
        else:
            if min(h, w) <= min_size and max(h, w) <= max_size:
                return None
            side = min(min_size, max_size)
        tile = (side, side)
    tw, th = tile
    return (min(int(tw), w), min(int(th), h))


def _starts(length: int, size: int, overlap: float) -> list[int]:
    if size >= length:
        return [0]
    stride = max(1, int(round(size * (1.0 - overlap))))
    starts = list(range(0, length - size, stride))
    return starts + [length - size]  # the last tile ends at the image edge


def tile_windows(*, image_hw: tuple[int, int], tile_wh: tuple[int, int], overlap: float) -> np.ndarray:
    """int64 (T, 4) tile windows, xyxy in image pixels (x2, y2 exclusive), row by row.

    Neighbours overlap by about ``overlap`` x the tile; every tile has the full tile size (the last in
    a row or column is moved in to end at the image edge), except where the image is smaller than a tile."""
    h, w = image_hw
    tw, th = tile_wh
    xs, ys = _starts(w, tw, overlap), _starts(h, th, overlap)
    return np.array([(x, y, min(x + tw, w), min(y + th, h)) for y in ys for x in xs], np.int64)


@dataclass
class Parts:
    """Detections gathered from tiles, before merging. ``class_ids`` int64 (N,); ``scores`` float32 (N,);
    ``bitmaps`` N bool (h_i, w_i); ``offsets`` int64 (N, 2) ``(x0, y0)`` in image pixels; ``windows``
    int64 (N, 4) xyxy: the window each detection was seen in; ``qualities`` float (N,) mask quality
    (NaN where the runtime gave none)."""

    class_ids: list
    scores: list
    bitmaps: list
    offsets: list
    windows: list
    qualities: list = field(default_factory=list)

    @classmethod
    def empty(cls) -> Parts:
        return cls([], [], [], [], [], [])

    def add(self, det: Detections, window: Sequence[int], *, scale: float = 1.0) -> None:
        """Add a runtime's detections for the image region ``window`` (its masks are in that region's
        pixels, scaled by ``scale`` when the region was resized before the model saw it)."""
        import cv2

        wx0, wy0, wx1, wy1 = (int(v) for v in window)
        quality = detection_quality(det)
        for k in range(len(det.scores)):
            m = det.masks[k]
            box = tight_box(m)
            if box is None:
                continue
            x0, y0, x1, y1 = box
            bitmap = m[y0:y1, x0:x1]
            if scale != 1.0:  # back to image pixels, this crop only
                ax, ay = int(np.floor(x0 / scale)), int(np.floor(y0 / scale))
                bx = min(int(np.ceil((x0 + bitmap.shape[1]) / scale)), wx1 - wx0)
                by = min(int(np.ceil((y0 + bitmap.shape[0]) / scale)), wy1 - wy0)
                bitmap = cv2.resize(bitmap.view(np.uint8), (bx - ax, by - ay), interpolation=cv2.INTER_NEAREST).astype(bool)
                x0, y0 = ax, ay
            self.class_ids.append(int(det.class_ids[k]))
            self.scores.append(float(det.scores[k]))
            self.bitmaps.append(np.ascontiguousarray(bitmap))
            self.offsets.append((wx0 + x0, wy0 + y0))
            self.windows.append((wx0, wy0, wx1, wy1))
            self.qualities.append(float("nan") if quality is None else float(quality[k]))


def predict_tiled(runtime, image: np.ndarray, *, tile_wh: tuple[int, int], overlap: float, full_pass: bool = False,
                  batch: int = 2, concurrency: int | None = None, switch: Callable[[int, float], object] | None = None,
                  progress: bool | None = None) -> Detections:
    """Run ``runtime`` (anything with ``predict(list of RGB uint8 arrays) -> list[Detections]``) over
    overlapping tiles of ``image`` (RGB uint8 (H, W, 3)) and merge the detections (module docstring).

    ``batch`` tiles go to the runtime per call; ``concurrency`` calls are in flight at once (None: the
    runtime's own ``concurrency``, 1 if it has none), from a thread
    pool (OpenVINO's requests release the GIL: cropping and collecting one batch overlap the next one's
    inference; at most ``2 x concurrency`` batches are cut ahead, so memory stays bounded). ``switch``:
    called once, after the second batch (timed: the first pays the runtime's warm-up), with ``(tiles left, seconds per tile so far)``; a runtime it
    returns runs the remaining tiles (the Segmenter prepares its fast path there when the rest of the
    image repays the conversion). Returns :class:`~masklab.structures.detections.Detections` in image
    pixels whose ``masks`` is a :class:`~masklab.structures.cropped.CroppedMasks`. ``progress``: a bar
    over tiles (None: only on a terminal and for 64 tiles or more)."""
    from tqdm.auto import tqdm

    h, w = image.shape[:2]
    windows = tile_windows(image_hw=(h, w), tile_wh=tile_wh, overlap=overlap)
    chunks = [windows[s : s + batch] for s in range(0, len(windows), batch)]
    parts = Parts.empty()
    # tqdm's disable=None: a bar only on a terminal
    disable = (True if len(windows) < 64 else None) if progress is None else not progress
    with tqdm(total=len(windows), desc="tiles", unit="tile", leave=False, disable=disable) as bar:
        def collect(dets, chunk) -> None:
            for det, win in zip(dets, chunk):
                parts.add(det, win)
            bar.update(len(chunk))

        first = 2 if switch is not None and len(chunks) > 2 else 0
        for i in range(first):  # the second batch is timed: the first one pays the runtime's warm-up
            t0 = time.perf_counter()
            collect(runtime.predict(_crops(image, chunks[i])), chunks[i])
        if first:
            seen = len(chunks[0]) + len(chunks[1])
            runtime = switch(len(windows) - seen, (time.perf_counter() - t0) / len(chunks[1])) or runtime
        if concurrency is None:  # the runtime's own (after a switch: the new runtime's)
            concurrency = max(1, int(getattr(runtime, "concurrency", 1)))
        _run_chunks(runtime, image, chunks[first:], collect, concurrency=concurrency)
    if full_pass:
        _add_full_pass(runtime, image, parts)
    return merge_parts(parts, image_size=(h, w))


def _crops(image: np.ndarray, chunk: np.ndarray) -> list[np.ndarray]:
    return [np.ascontiguousarray(image[y0:y1, x0:x1]) for x0, y0, x1, y1 in chunk.tolist()]


def _run_chunks(runtime, image: np.ndarray, chunks: list, collect, *, concurrency: int) -> None:
    """``collect(detections, chunk)`` for every chunk, in order; up to ``concurrency`` runtime calls at once."""
    if concurrency <= 1:
        for chunk in chunks:
            collect(runtime.predict(_crops(image, chunk)), chunk)
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="masklab-tile") as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append((pool.submit(lambda c=chunk: runtime.predict(_crops(image, c))), chunk))
            if len(pending) >= 2 * concurrency:
                future, done = pending.popleft()
                collect(future.result(), done)
        while pending:
            future, done = pending.popleft()
            collect(future.result(), done)


def _add_full_pass(runtime, image: np.ndarray, parts: Parts) -> None:
    import cv2

    h, w = image.shape[:2]
    scale = min(1.0, FULL_PASS_SIDE / max(h, w))
    small = image if scale == 1.0 else cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))),
                                                   interpolation=cv2.INTER_AREA)
    sx = small.shape[1] / w  # the scale actually used (rounding)
    parts.add(runtime.predict([small])[0], (0, 0, w, h), scale=sx)


def _boxes(bitmaps: Sequence[np.ndarray], offsets: np.ndarray) -> np.ndarray:
    """int64 (N, 4) xyxy of each bitmap at its offset (bitmaps are already tight)."""
    shapes = np.array([b.shape for b in bitmaps], np.int64).reshape(-1, 2)
    return np.concatenate([offsets, offsets + shapes[:, ::-1]], axis=1)


def _candidate_pairs(boxes: np.ndarray, class_ids: np.ndarray) -> list[tuple[int, int]]:
    """Pairs (i, j), i < j, of the same class whose boxes overlap (sweep over x, so not N x N)."""
    order = np.argsort(boxes[:, 0], kind="stable")
    x1s = boxes[order, 0]
    pairs = []
    for rank, i in enumerate(order.tolist()):
        end = int(np.searchsorted(x1s, boxes[i, 2], side="left"))  # boxes starting left of i's right edge
        js = order[rank + 1 : end]
        if js.size == 0:
            continue
        ok = (class_ids[js] == class_ids[i]) & (boxes[js, 1] < boxes[i, 3]) & (boxes[js, 3] > boxes[i, 1])
        pairs += [(min(i, j), max(i, j)) for j in js[ok].tolist()]
    return pairs


def _area_in(bitmap: np.ndarray, off, window) -> int:
    x0, y0 = off
    wx0, wy0, wx1, wy1 = window
    ys, ye = max(wy0 - y0, 0), min(wy1 - y0, bitmap.shape[0])
    xs, xe = max(wx0 - x0, 0), min(wx1 - x0, bitmap.shape[1])
    return int(bitmap[ys:ye, xs:xe].sum()) if ys < ye and xs < xe else 0


def _same_object(a: int, b: int, parts: Parts, boxes: np.ndarray, offsets: np.ndarray, windows: np.ndarray) -> bool:
    """Intersection over the smaller mask inside the window both were seen in >= :data:`MATCH_IOS`."""
    ix0, iy0 = max(boxes[a, 0], boxes[b, 0]), max(boxes[a, 1], boxes[b, 1])
    ix1, iy1 = min(boxes[a, 2], boxes[b, 2]), min(boxes[a, 3], boxes[b, 3])
    ba, bb = parts.bitmaps[a], parts.bitmaps[b]
    (ax, ay), (bx, by) = offsets[a], offsets[b]
    inter = int((ba[iy0 - ay : iy1 - ay, ix0 - ax : ix1 - ax] & bb[iy0 - by : iy1 - by, ix0 - bx : ix1 - bx]).sum())
    if inter == 0:
        return False
    common = (max(windows[a, 0], windows[b, 0]), max(windows[a, 1], windows[b, 1]),
              min(windows[a, 2], windows[b, 2]), min(windows[a, 3], windows[b, 3]))
    smaller = min(_area_in(ba, offsets[a], common), _area_in(bb, offsets[b], common))
    return smaller > 0 and inter / smaller >= MATCH_IOS


def _groups(n: int, pairs: list[tuple[int, int]]) -> list[list[int]]:
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    out: dict[int, list[int]] = {}
    for i in range(n):
        out.setdefault(find(i), []).append(i)
    return list(out.values())


def merge_parts(parts: Parts, *, image_size: tuple[int, int]) -> Detections:
    """Merge ``parts`` into one detection per object (module docstring); sorted by score, best first.

    Returns :class:`~masklab.structures.detections.Detections` with ``masks`` a
    :class:`~masklab.structures.cropped.CroppedMasks` and ``boxes`` the merged masks' tight boxes."""
    n = len(parts.scores)
    if n == 0:
        return Detections(boxes=np.zeros((0, 4), np.float32), scores=np.zeros(0, np.float32),
                          class_ids=np.zeros(0, np.int64), masks=CroppedMasks([], [], image_size=image_size))
    offsets = np.asarray(parts.offsets, np.int64).reshape(-1, 2)
    windows = np.asarray(parts.windows, np.int64).reshape(-1, 4)
    class_ids = np.asarray(parts.class_ids, np.int64)
    scores = np.asarray(parts.scores, np.float32)
    boxes = _boxes(parts.bitmaps, offsets)
    pairs = [p for p in _candidate_pairs(boxes, class_ids) if _same_object(*p, parts, boxes, offsets, windows)]
    qualities = np.asarray(parts.qualities, np.float32)
    bitmaps, offs, out_scores, out_classes, out_quality = [], [], [], [], []
    for group in _groups(n, pairs):
        g = np.asarray(group)
        x0, y0 = boxes[g, 0].min(), boxes[g, 1].min()
        x1, y1 = boxes[g, 2].max(), boxes[g, 3].max()
        union = np.zeros((y1 - y0, x1 - x0), bool)
        for i in group:
            b, (bx, by) = parts.bitmaps[i], offsets[i]
            union[by - y0 : by - y0 + b.shape[0], bx - x0 : bx - x0 + b.shape[1]] |= b
        bitmaps.append(union)
        offs.append((x0, y0))
        out_scores.append(scores[g].max())
        out_classes.append(class_ids[g[0]])
        out_quality.append(qualities[g[np.argmax(scores[g])]])  # the best-scored part's mask quality
    order = np.argsort(-np.asarray(out_scores, np.float32), kind="stable")
    masks = CroppedMasks([bitmaps[i] for i in order], np.asarray(offs, np.int64)[order], image_size=image_size)
    quality = np.asarray(out_quality, np.float32)[order]
    return Detections(boxes=masks.boxes(), scores=np.asarray(out_scores, np.float32)[order],
                      class_ids=np.asarray(out_classes, np.int64)[order], masks=masks,
                      quality=None if np.isnan(quality).any() else quality)
