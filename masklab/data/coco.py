"""Read a COCO-format ground-truth JSON: images, categories, and annotations as :class:`Instances`.

    >>> gt = CocoGroundTruth.load("val.json")                 # doctest: +SKIP
    >>> gt.image_ids[:3], gt.categories                       # {dataset category id: name}
    >>> inst = gt.instances(gt.image_ids[0])                  # Instances, class_ids = dataset ids
    >>> inst.extra["iscrowd"]                                 # bool (N,)
    >>> image = gt.load_image(gt.image_ids[0])                # LoadedImage, RGB uint8 (H, W, 3)

What is accepted:

- ``segmentation`` as polygons (a list of ``[x1, y1, x2, y2, ...]`` lists, each at least 3 points),
  uncompressed RLE (``counts`` a list of ints, as COCO's crowd annotations) or compressed RLE
  (``counts`` a str). Polygon coordinates are in pixels, origin at the image's top-left corner.
- Category ids need not be contiguous (COCO's own run 1..90 with gaps): ``Instances.class_ids`` hold
  the dataset's ids and ``Instances.labels`` the category names.
- ``iscrowd`` (default 0). Missing ``bbox`` and ``area`` are computed from the mask (pycocotools);
  a missing annotation ``id`` is numbered after the largest given one. Image and annotation ids are ints.

Image files are found (see :meth:`CocoGroundTruth.image_path`) in ``images_dir`` when given, else
relative to the JSON's folder, else in a sibling folder named like the JSON (``val.json`` -> ``val/``),
which is COCO's own layout (``annotations/instances_val2017.json`` + ``val2017/``) once moved next to it.

Anything malformed raises :class:`~masklab.errors.DatasetError` naming the entry and what was expected.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from masklab.errors import DatasetError
from masklab.structures.instances import Instances

__all__ = ["CocoImage", "CocoGroundTruth", "annotation_to_rle"]


@dataclass(frozen=True)
class CocoImage:
    """One ``images`` entry: ``id``, ``file_name`` (as written in the JSON), ``height``/``width`` in pixels."""

    id: int
    file_name: str
    height: int
    width: int


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def annotation_to_rle(segmentation: Any, height: int, width: int, *, where: str = "annotation") -> dict:
    """A COCO ``segmentation`` (polygons, uncompressed or compressed RLE) -> one compressed RLE dict.

    The returned dict has ``size`` [H, W] and ``counts`` as bytes (what pycocotools' C code takes).
    Raises :class:`DatasetError` for an unknown shape, a polygon with fewer than 3 points, or an RLE
    whose ``size`` is not the image's (H, W).
    """
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        if not segmentation:
            raise DatasetError(f"{where}: empty polygon list in 'segmentation'")
        polys = []
        for poly in segmentation:
            if not isinstance(poly, (list, tuple)) or len(poly) < 6 or len(poly) % 2:
                n = len(poly) if isinstance(poly, (list, tuple)) else type(poly).__name__
                raise DatasetError(f"{where}: a polygon needs an even number of >= 6 coordinates (3 points), found {n}")
            polys.append([float(v) for v in poly])
        return mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        size = [int(v) for v in segmentation["size"]]
        if size != [height, width]:
            raise DatasetError(f"{where}: RLE size {size} does not match the image's [height, width] {[height, width]}")
        counts = segmentation["counts"]
        if isinstance(counts, list):  # uncompressed RLE (COCO crowd annotations)
            return mask_utils.frPyObjects({"size": size, "counts": counts}, height, width)
        if isinstance(counts, str):
            counts = counts.encode("ascii")
        if not isinstance(counts, bytes):
            raise DatasetError(f"{where}: RLE 'counts' must be a str or a list of ints, found {type(counts).__name__}")
        return {"size": size, "counts": counts}
    raise DatasetError(
        f"{where}: 'segmentation' must be a list of polygons or an RLE dict with 'size' and 'counts', "
        f"found {type(segmentation).__name__}"
    )


@dataclass
class CocoGroundTruth:
    """A COCO ground-truth set, validated and completed (every annotation has id, bbox, area, iscrowd).

    Build it with :meth:`load` (a file) or :meth:`from_dict` (an in-memory dict), not the constructor.

    Attributes:
        dataset: the completed COCO dict (``images``, ``annotations``, ``categories``); what pycocotools reads.
        images: ``{image id: CocoImage}`` in file order.
        categories: ``{dataset category id: name}`` in file order (ids may be non-contiguous).
        root: the JSON's folder (image files are looked up relative to it); None for an in-memory dict.
        images_dir: where image files are, when given explicitly (``--images``).
        source_name: the JSON's file name, or ``"<dict>"``.
    """

    dataset: dict
    images: dict[int, CocoImage]
    categories: dict[int, str]
    root: Path | None = None
    images_dir: Path | None = None
    source_name: str = "<dict>"
    _anns_by_image: dict[int, list[dict]] = field(default_factory=dict, repr=False)
    _coco: Any = field(default=None, repr=False)

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike, *, images_dir: str | os.PathLike | None = None) -> CocoGroundTruth:
        """Read and validate a COCO JSON file (see the module docstring for what is accepted)."""
        path = Path(path)
        if not path.is_file():
            raise DatasetError(f"{path}: no such COCO JSON file")
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DatasetError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(data, root=path.parent, images_dir=images_dir, source_name=path.name)

    @classmethod
    def from_dict(
        cls,
        data: Any,
        *,
        root: str | os.PathLike | None = None,
        images_dir: str | os.PathLike | None = None,
        source_name: str = "<dict>",
    ) -> CocoGroundTruth:
        """Validate and complete an in-memory COCO dict (the input is not modified)."""
        if images_dir is not None and not Path(images_dir).is_dir():
            raise DatasetError(f"images folder {images_dir} does not exist")
        if not isinstance(data, dict):
            raise DatasetError(f"{source_name}: expected a COCO JSON object, found {type(data).__name__}")
        missing = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)]
        if missing:
            raise DatasetError(f"{source_name}: expected lists 'images', 'annotations' and 'categories'; missing or not a list: {missing}")
        images = _read_images(data["images"], source_name)
        categories = _read_categories(data["categories"], source_name)
        anns = _read_annotations(data["annotations"], images, categories, source_name)
        by_image: dict[int, list[dict]] = {i: [] for i in images}
        for a in anns:
            by_image[a["image_id"]].append(a)
        completed = {k: v for k, v in data.items() if k not in ("images", "annotations", "categories")}
        completed["images"] = [dict(d) for d in data["images"]]
        completed["categories"] = [dict(d) for d in data["categories"]]
        completed["annotations"] = anns
        return cls(
            dataset=completed,
            images=images,
            categories=categories,
            root=None if root is None else Path(root),
            images_dir=None if images_dir is None else Path(images_dir),
            source_name=source_name,
            _anns_by_image=by_image,
        )

    # -- lookups ------------------------------------------------------------------------------------
    @property
    def image_ids(self) -> list[int]:
        """Image ids in file order."""
        return list(self.images)

    @property
    def category_names(self) -> tuple[str, ...]:
        """Category names in file order."""
        return tuple(self.categories.values())

    def category_id(self, name: str) -> int:
        """The dataset id of category ``name`` (KeyError listing the names if unknown)."""
        for cid, n in self.categories.items():
            if n == name:
                return cid
        raise KeyError(f"no category named {name!r}; categories: {list(self.categories.values())}")

    def annotations(self, image_id: int) -> list[dict]:
        """The completed annotation dicts of one image (crowd ones included)."""
        if image_id not in self._anns_by_image:
            raise KeyError(f"image id {image_id!r} is not in {self.source_name}")
        return self._anns_by_image[image_id]

    def instances(self, image_id: int) -> Instances:
        """Ground truth of one image as :class:`Instances`.

        ``boxes`` are the annotations' ``bbox`` as xyxy pixels; ``masks`` decoded from polygons/RLE;
        ``scores`` 1.0; ``class_ids`` the dataset's category ids; ``labels`` the category names;
        ``extra["iscrowd"]`` bool (N,) and ``extra["annotation_id"]`` int64 (N,).
        """
        from pycocotools import mask as mask_utils

        img = self.images[image_id] if image_id in self.images else None
        if img is None:
            raise KeyError(f"image id {image_id!r} is not in {self.source_name}")
        anns = self._anns_by_image[image_id]
        h, w = img.height, img.width
        rles = [annotation_to_rle(a["segmentation"], h, w, where=f"annotation {a['id']}") for a in anns]
        masks = mask_utils.decode(rles).transpose(2, 0, 1).astype(bool) if anns else np.zeros((0, h, w), bool)
        xywh = np.array([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        return Instances(
            boxes=boxes,
            masks=np.ascontiguousarray(masks),
            scores=np.ones(len(anns), np.float32),
            class_ids=[a["category_id"] for a in anns],
            labels=[self.categories[a["category_id"]] for a in anns],
            image_size=(h, w),
            extra={
                "iscrowd": np.array([bool(a["iscrowd"]) for a in anns], bool),
                "annotation_id": np.array([a["id"] for a in anns], np.int64),
            },
        )

    def image_path(self, image_id: int) -> Path:
        """The image file of ``image_id``: in ``images_dir`` if given, else relative to the JSON's folder,
        else in the sibling folder named like the JSON (``val.json`` -> ``val/``). DatasetError if none exists."""
        img = self.images.get(image_id)
        if img is None:
            raise KeyError(f"image id {image_id!r} is not in {self.source_name}")
        tried = self._candidates(img.file_name)
        for p in tried:
            if p.is_file():
                return p
        where = ", ".join(str(p) for p in tried) or "(no folder to look in: the set was not read from a file)"
        raise DatasetError(f"image {image_id} ({img.file_name!r}): file not found; looked for {where} (use --images DIR)")

    def _candidates(self, file_name: str) -> list[Path]:
        if self.images_dir is not None:
            return [self.images_dir / file_name]
        if self.root is None:
            return [Path(file_name)] if Path(file_name).is_absolute() else []
        stem = Path(self.source_name).stem
        return [self.root / file_name, self.root / stem / file_name]

    def load_image(self, image_id: int):
        """Load the image file (:func:`masklab.io.images.load_image`); DatasetError if its size is not the JSON's."""
        from masklab.io.images import load_image

        img = self.images[image_id]
        loaded = load_image(self.image_path(image_id))
        if loaded.size_hw != (img.height, img.width):
            raise DatasetError(
                f"image {image_id} ({img.file_name}): the file is {loaded.size_hw[1]}x{loaded.size_hw[0]} (WxH) "
                f"but the JSON says {img.width}x{img.height}"
            )
        return loaded

    def coco_api(self):
        """A ``pycocotools.coco.COCO`` over a copy of :attr:`dataset` (built once, without pycocotools' prints).

        A copy, because ``COCOeval`` rewrites the ground truth it is given (polygons become RLE, an
        ``ignore`` key appears); :attr:`dataset` stays as read.
        """
        if self._coco is None:
            import copy

            from pycocotools.coco import COCO

            coco = COCO()
            coco.dataset = copy.deepcopy(self.dataset)
            with contextlib.redirect_stdout(io.StringIO()):
                coco.createIndex()
            self._coco = coco
        return self._coco

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        n_anns = len(self.dataset["annotations"])
        return f"CocoGroundTruth({self.source_name!r}, images={len(self.images)}, annotations={n_anns}, categories={len(self.categories)})"


# -- validation helpers -----------------------------------------------------------------------------
def _read_images(entries: list, src: str) -> dict[int, CocoImage]:
    images: dict[int, CocoImage] = {}
    for i, d in enumerate(entries):
        if not isinstance(d, dict):
            raise DatasetError(f"{src}: images[{i}] must be an object, found {type(d).__name__}")
        bad = [k for k in ("id", "width", "height") if not _is_int(d.get(k))]
        if bad:
            raise DatasetError(f"{src}: images[{i}] needs integer {bad}; found {{{', '.join(f'{k}: {d.get(k)!r}' for k in bad)}}}")
        if d["width"] <= 0 or d["height"] <= 0:
            raise DatasetError(f"{src}: image {d['id']} has size {d['width']}x{d['height']}; expected positive width and height")
        if d["id"] in images:
            raise DatasetError(f"{src}: duplicate image id {d['id']}")
        images[int(d["id"])] = CocoImage(int(d["id"]), str(d.get("file_name", "")), int(d["height"]), int(d["width"]))
    return images


def _read_categories(entries: list, src: str) -> dict[int, str]:
    cats: dict[int, str] = {}
    for i, d in enumerate(entries):
        if not isinstance(d, dict) or not _is_int(d.get("id")) or not isinstance(d.get("name"), str):
            raise DatasetError(f"{src}: categories[{i}] needs an integer 'id' and a string 'name', found {d!r}")
        if d["id"] in cats:
            raise DatasetError(f"{src}: duplicate category id {d['id']}")
        cats[int(d["id"])] = d["name"]
    names = list(cats.values())
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DatasetError(f"{src}: category names must be unique (models are matched by name); repeated: {dupes}")
    return cats


def _read_annotations(entries: list, images: dict[int, CocoImage], cats: dict[int, str], src: str) -> list[dict]:
    from pycocotools import mask as mask_utils

    given = [d.get("id") for d in entries if isinstance(d, dict) and _is_int(d.get("id"))]
    next_id = max(given, default=0) + 1
    seen: set[int] = set()
    out = []
    for i, d in enumerate(entries):
        if not isinstance(d, dict):
            raise DatasetError(f"{src}: annotations[{i}] must be an object, found {type(d).__name__}")
        a = dict(d)
        if "id" not in a:
            a["id"] = next_id
            next_id += 1
        where = f"{src}: annotation {a['id']}"
        if not _is_int(a["id"]) or a["id"] in seen:
            raise DatasetError(f"{where}: annotation ids must be unique integers")
        seen.add(a["id"])
        if a.get("image_id") not in images:
            raise DatasetError(f"{where}: image_id {a.get('image_id')!r} is not in 'images'")
        if a.get("category_id") not in cats:
            raise DatasetError(f"{where}: category_id {a.get('category_id')!r} is not in 'categories' (ids: {sorted(cats)})")
        if "segmentation" not in a:
            raise DatasetError(f"{where}: no 'segmentation' (masklab evaluates and trains instance masks)")
        img = images[a["image_id"]]
        rle = annotation_to_rle(a["segmentation"], img.height, img.width, where=where)
        a["iscrowd"] = int(bool(a.get("iscrowd", 0)))
        if "area" not in a:
            a["area"] = float(mask_utils.area(rle))
        if "bbox" not in a:
            a["bbox"] = [float(v) for v in mask_utils.toBbox(rle)]
        elif not (isinstance(a["bbox"], (list, tuple)) and len(a["bbox"]) == 4):
            raise DatasetError(f"{where}: 'bbox' must be [x, y, width, height], found {a['bbox']!r}")
        out.append(a)
    return out
