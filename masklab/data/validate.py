"""``masklab validate DATA``: everything in a dataset that would break training or silently hurt it.

Checks (each problem has a ``kind``): ``reader`` (a file the format reader could not take),
``missing_image``, ``unreadable_image``, ``size_mismatch`` (file vs annotation), ``duplicate_id`` (images,
annotations or categories), ``unknown_image``, ``unknown_category``, ``bad_polygon`` (fewer than 3
points or an odd number of coordinates), ``bad_segmentation`` (neither polygons nor RLE, or an RLE of
the wrong size), ``empty_mask``, ``box_outside`` (the ``bbox`` leaves the image), ``bad_box`` (zero or
negative width/height), ``no_examples`` (a class with no instance). Plus a per-class table of counts.

Unlike the readers used for training (which stop at the first error), this goes on and lists all.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from masklab.data.readers import DatasetSource, read_dataset
from masklab.errors import DatasetError, MasklabError

__all__ = ["Problem", "ValidationReport", "validate_dataset", "validate_source"]


@dataclass(frozen=True)
class Problem:
    """One finding: ``kind`` (see the module docstring), ``where`` (file / image / annotation), ``message``."""

    kind: str
    where: str
    message: str


@dataclass
class ValidationReport:
    """``problems``; ``per_class``: ``{name: {"instances": n, "images": n}}`` (crowd included);
    ``images``/``annotations``: totals; ``format``."""

    format: str
    images: int
    annotations: int
    per_class: dict[str, dict[str, int]]
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def counts(self) -> dict[str, int]:
        """Number of problems per kind."""
        return dict(Counter(p.kind for p in self.problems))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format, "images": self.images, "annotations": self.annotations, "ok": self.ok,
            "per_class": self.per_class, "problem_counts": self.counts(),
            "problems": [{"kind": p.kind, "where": p.where, "message": p.message} for p in self.problems],
        }

    def render(self, *, max_listed: int = 20) -> str:
        """A human-readable report: problems (first ``max_listed``), counts per kind, the class table."""
        lines = [f"{self.format} dataset: {self.images} images, {self.annotations} annotations, {len(self.per_class)} classes"]
        if self.problems:
            lines.append(f"\n{len(self.problems)} problems:")
            for p in self.problems[:max_listed]:
                lines.append(f"  [{p.kind}] {p.where}: {p.message}")
            if len(self.problems) > max_listed:
                lines.append(f"  ... and {len(self.problems) - max_listed} more (--json for all)")
            lines.append("  by kind: " + ", ".join(f"{k} {n}" for k, n in sorted(self.counts().items())))
        else:
            lines.append("\nno problems found")
        w = max([len("class")] + [len(n) for n in self.per_class])
        lines += ["", f"{'class'.ljust(w)}  instances  images"]
        for name, c in self.per_class.items():
            lines.append(f"{name.ljust(w)}  {c['instances']:>9}  {c['images']:>6}")
        return "\n".join(lines)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_image_file(path: Path, declared: tuple[int, int], where: str, out: list[Problem]) -> None:
    from masklab.io.images import load_image

    if not path.is_file():
        out.append(Problem("missing_image", where, f"image file {path} does not exist"))
        return
    try:
        size = load_image(path).size_hw
    except MasklabError as e:
        out.append(Problem("unreadable_image", where, str(e)))
        return
    if size != declared:
        out.append(Problem("size_mismatch", where, f"the file is {size[1]}x{size[0]} (WxH), the annotations say {declared[1]}x{declared[0]}"))


def _segmentation_area(seg: Any, h: int, w: int, where: str, out: list[Problem]) -> float | None:
    """Decoded mask area in pixels, or None after recording why it could not be decoded."""
    from pycocotools import mask as mask_utils

    if isinstance(seg, list):
        if not seg:
            out.append(Problem("empty_mask", where, "the polygon list is empty"))
            return None
        good = []
        for poly in seg:
            if not isinstance(poly, (list, tuple)) or len(poly) % 2 or len(poly) < 6:
                n = len(poly) // 2 if isinstance(poly, (list, tuple)) else 0
                out.append(Problem("bad_polygon", where, f"a polygon needs at least 3 points (6 numbers, even count); found {n} points"))
                continue
            good.append([float(v) for v in poly])
        if not good:
            return None
        return float(mask_utils.area(mask_utils.merge(mask_utils.frPyObjects(good, h, w))))
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        if [int(v) for v in seg["size"]] != [h, w]:
            out.append(Problem("bad_segmentation", where, f"RLE size {seg['size']} is not the image's [height, width] {[h, w]}"))
            return None
        counts = seg["counts"]
        rle = mask_utils.frPyObjects(seg, h, w) if isinstance(counts, list) else {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
        try:
            return float(mask_utils.area(rle))
        except (ValueError, TypeError) as e:
            out.append(Problem("bad_segmentation", where, f"RLE could not be decoded ({e})"))
            return None
    out.append(Problem("bad_segmentation", where, f"expected polygons or an RLE dict, found {type(seg).__name__}"))
    return None


def validate_source(src: DatasetSource, *, check_files: bool = True) -> ValidationReport:
    """Check a reader's output (see the module docstring); ``check_files``: open every image file."""
    probs: list[Problem] = [Problem("reader", src.source_name, p) for p in src.problems]
    doc = src.coco
    images_raw = doc.get("images") if isinstance(doc.get("images"), list) else []
    anns_raw = doc.get("annotations") if isinstance(doc.get("annotations"), list) else []
    cats_raw = doc.get("categories") if isinstance(doc.get("categories"), list) else []
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            probs.append(Problem("reader", src.source_name, f"'{key}' is missing or not a list"))

    cats: dict[int, str] = {}
    for c in cats_raw:
        if not isinstance(c, dict) or not _is_int(c.get("id")):
            probs.append(Problem("reader", "categories", f"a category needs an integer id and a name, found {c!r}"))
        elif c["id"] in cats:
            probs.append(Problem("duplicate_id", f"category {c['id']}", f"category id {c['id']} is used twice ({cats[c['id']]!r}, {c.get('name')!r})"))
        else:
            cats[c["id"]] = str(c.get("name"))

    images: dict[int, tuple[int, int]] = {}
    for i, im in enumerate(images_raw):
        if not isinstance(im, dict) or not all(_is_int(im.get(k)) for k in ("id", "height", "width")):
            probs.append(Problem("reader", f"images[{i}]", "an image needs integer id, height and width"))
            continue
        where = f"image {im['id']} ({im.get('file_name', '')})"
        if im["id"] in images:
            probs.append(Problem("duplicate_id", where, f"image id {im['id']} is used twice"))
            continue
        images[im["id"]] = (im["height"], im["width"])
        if check_files:
            name = str(im.get("file_name", ""))
            cands = [src.root / name, src.root / Path(src.source_name).stem / name]
            path = next((c for c in cands if c.is_file()), cands[0])
            _check_image_file(path, (im["height"], im["width"]), where, probs)

    per_class = {name: {"instances": 0, "images": 0} for name in cats.values()}
    class_images: dict[str, set] = {name: set() for name in cats.values()}
    seen_ann: set[int] = set()
    for i, a in enumerate(anns_raw):
        if not isinstance(a, dict):
            probs.append(Problem("reader", f"annotations[{i}]", "an annotation must be an object"))
            continue
        where = f"annotation {a.get('id', f'#{i}')}"
        if _is_int(a.get("id")):
            if a["id"] in seen_ann:
                probs.append(Problem("duplicate_id", where, f"annotation id {a['id']} is used twice"))
            seen_ann.add(a["id"])
        if a.get("image_id") not in images:
            probs.append(Problem("unknown_image", where, f"image_id {a.get('image_id')!r} is not in 'images'"))
            continue
        if a.get("category_id") not in cats:
            probs.append(Problem("unknown_category", where, f"category_id {a.get('category_id')!r} is not in 'categories' (ids: {sorted(cats)})"))
            continue
        where = f"{where} (image {a['image_id']}, {cats[a['category_id']]})"
        h, w = images[a["image_id"]]
        if "segmentation" not in a:
            probs.append(Problem("bad_segmentation", where, "no 'segmentation'"))
        else:
            area = _segmentation_area(a["segmentation"], h, w, where, probs)
            if area is not None and area == 0:
                probs.append(Problem("empty_mask", where, "the mask covers no pixel (inside the image)"))
        box = a.get("bbox")
        if box is not None:
            if not (isinstance(box, (list, tuple)) and len(box) == 4):
                probs.append(Problem("bad_box", where, f"bbox must be [x, y, width, height], found {box!r}"))
            else:
                x, y, bw, bh = (float(v) for v in box)
                if bw <= 0 or bh <= 0:
                    probs.append(Problem("bad_box", where, f"bbox {box} has zero or negative width/height"))
                elif x < -0.5 or y < -0.5 or x + bw > w + 0.5 or y + bh > h + 0.5:
                    probs.append(Problem("box_outside", where, f"bbox [x, y, w, h] {[round(v, 1) for v in box]} leaves the {w}x{h} image"))
        name = cats[a["category_id"]]
        per_class[name]["instances"] += 1
        class_images[name].add(a["image_id"])
    for name in per_class:
        per_class[name]["images"] = len(class_images[name])
        if per_class[name]["instances"] == 0:
            probs.append(Problem("no_examples", f"class {name!r}", "no instance of this class: the model cannot learn it"))
    return ValidationReport(src.format, len(images), len(anns_raw), per_class, probs)


def validate_dataset(path: str | os.PathLike, *, format: str | None = None, check_files: bool = True) -> ValidationReport:
    """Read ``path`` (any supported format) and check it; a dataset that cannot be read at all gives a
    report with one ``reader`` problem."""
    try:
        src = read_dataset(path, format=format)
    except DatasetError as e:
        return ValidationReport(format or "unknown", 0, 0, {}, [Problem("reader", str(path), str(e))])
    return validate_source(src, check_files=check_files)
