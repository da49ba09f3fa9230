"""Label Studio: pre-annotation tasks (brush RLE or polygons, with scores) and reading a JSON export back.

Tasks (:func:`labelstudio_tasks`, the JSON list a project imports; format documented at
https://labelstud.io/guide/predictions and https://labelstud.io/guide/task_format): one task per image,
``{"data": {"image": URL}, "predictions": [{"model_version", "score", "result": [...]}]}``. Each object
is one result: ``brushlabels`` (``value.format`` "rle", ``value.rle`` Label Studio's own RLE of the
image's RGBA bytes, exact, holes included) or ``polygonlabels`` (``value.points`` ``[x, y]`` in percent
of the image width/height, pixel centres: ``(x + 0.5) / W * 100``; one result per part: Label Studio
polygons have no holes and no parts, use brush for those), with ``score``. The project's labeling config must name the tags as :func:`labelstudio_config` does
(``from_name`` "label", ``to_name`` "image").

Reading (:func:`read_labelstudio`): a Label Studio "JSON" export (tasks with ``annotations``; or
``predictions`` with ``use_predictions=True``); ``brushlabels``, ``polygonlabels`` and
``rectanglelabels`` results become masks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np

from masklab.errors import DatasetError
from masklab.interop.common import Item, item_classes
from masklab.io.atomic import atomic_write_json, atomic_write_text
from masklab.io.formats.common import LabeledImage
from masklab.structures.instances import Instances
from masklab.structures.polygons import Polygon, mask_to_polygons, polygons_to_mask

__all__ = ["labelstudio_tasks", "labelstudio_config", "write_labelstudio", "read_labelstudio", "brush_rle_encode",
           "brush_rle_decode", "KINDS"]

KINDS = ("brush", "polygon")


# -- Label Studio's brush RLE (label_studio_converter.brush: a bit stream over the RGBA bytes) ----------
def brush_rle_encode(mask: np.ndarray) -> list[int]:
    """bool (H, W) -> Label Studio brush RLE (a list of byte values) of the RGBA image that is 255 in every
    channel inside the mask. Header: 32-bit value count, 5-bit word size - 1 (7), four 4-bit run-size
    fields - 1 (3, 4, 8, 16 bits); then every run as ``1``, ``11`` (the 16-bit size), length - 1, value."""
    flat = np.asarray(mask, bool).reshape(-1)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate([[0], change])
    lengths = np.diff(np.concatenate([starts, [len(flat)]])) * 4  # each pixel is 4 equal bytes
    values = np.where(flat[starts], 255, 0)
    chunks_len, chunks_val = [], []
    for n, v in zip(lengths.tolist(), values.tolist()):
        while n > 0:
            take = min(n, 1 << 16)
            chunks_len.append(take)
            chunks_val.append(v)
            n -= take
    words = (1 << 26) | (3 << 24) | ((np.array(chunks_len, np.int64) - 1) << 8) | np.array(chunks_val, np.int64)
    body = ((words[:, None] >> np.arange(26, -1, -1)) & 1).reshape(-1)
    header = [(len(flat) * 4, 32), (7, 5), (2, 4), (3, 4), (7, 4), (15, 4)]
    head = np.concatenate([(np.array([v]) >> np.arange(b - 1, -1, -1)) & 1 for v, b in header])
    bits = np.concatenate([head, body]).astype(np.uint8)
    return np.packbits(bits).tolist()  # packbits pads the last byte with zeros


def brush_rle_decode(rle: Sequence[int], size: tuple[int, int]) -> np.ndarray:
    """Label Studio brush RLE -> bool (H, W) (alpha channel > 0)."""
    bits = np.unpackbits(np.asarray(rle, np.uint8))
    pos = 0

    def read(n: int) -> int:
        nonlocal pos
        v = int("".join(map(str, bits[pos : pos + n].tolist())) or "0", 2)
        pos += n
        return v

    num, word = read(32), read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    h, w = size
    if num != h * w * 4:
        raise ValueError(f"the RLE holds {num} values, a {h} x {w} RGBA image has {h * w * 4}")
    out = np.zeros(num, np.uint8)
    i = 0
    while i < num:
        series = read(1)
        j = i + 1 + read(sizes[read(2)])
        if series:
            out[i:j] = read(word)
        else:
            for k in range(i, j):
                out[k] = read(word)
        i = j
    return out.reshape(h, w, 4)[:, :, 3] > 0


# -- writing --------------------------------------------------------------------------------------------
def labelstudio_config(class_names: Sequence[str], *, kind: str = "brush") -> str:
    """The labeling config (Settings > Labeling Interface > Code) the tasks' results fit."""
    tag = {"brush": "BrushLabels", "polygon": "PolygonLabels"}[_check_kind(kind)]
    labels = "\n".join(f"    <Label value={quoteattr(n)}/>" for n in class_names)
    return f'<View>\n  <Image name="image" value="$image" zoom="true"/>\n  <{tag} name="label" toName="image">\n{labels}\n  </{tag}>\n</View>\n'


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"Label Studio result kind must be one of {', '.join(KINDS)}, found {kind!r}")
    return kind


def _results(inst: Instances, kind: str, tolerance: float) -> list[dict[str, Any]]:
    h, w = inst.image_size
    dense, out = inst.dense(), []
    for k in range(len(inst)):
        mask, label = np.asarray(dense.masks[k], bool), inst.labels[k]
        common = {"from_name": "label", "to_name": "image", "original_width": w, "original_height": h,
                  "image_rotation": 0, "score": round(float(inst.scores[k]), 6)}
        if kind == "brush":
            value = {"format": "rle", "rle": brush_rle_encode(mask), "brushlabels": [label]}
            out.append({"id": f"m{k}", "type": "brushlabels", "value": value, **common})
            continue
        for p, part in enumerate(mask_to_polygons(mask, tolerance=tolerance)):
            pts = [[round((x + 0.5) / w * 100, 4), round((y + 0.5) / h * 100, 4)] for x, y in part.exterior]
            value = {"points": pts, "closed": True, "polygonlabels": [label]}
            out.append({"id": f"m{k}p{p}", "type": "polygonlabels", "value": value, **common})
    return out


def labelstudio_tasks(items: Sequence[Item], *, kind: str = "brush", image_url_prefix: str = "",
                      model_version: str = "masklab", tolerance: float = 0.0) -> list[dict[str, Any]]:
    """Import-ready Label Studio tasks with the items' objects as predictions (see the module docstring).

    ``image_url_prefix`` is put before each image name in ``data.image`` (e.g. ``"/data/local-files/?d="``
    for local storage, or an http(s) URL of the folder). ``tolerance``: polygon simplification in pixels.
    """
    _check_kind(kind)
    tasks = []
    for name, inst in items:
        pred = {"model_version": model_version, "score": round(float(inst.scores.mean()), 6) if len(inst) else 0.0,
                "result": _results(inst, kind, tolerance)}
        tasks.append({"data": {"image": f"{image_url_prefix}{name}"}, "predictions": [pred]})
    return tasks


def write_labelstudio(out_dir: str | Path, items: Sequence[Item], class_names: Sequence[str] | None = None, *,
                      kind: str = "brush", image_url_prefix: str = "", tolerance: float = 0.0) -> list[Path]:
    """Write ``out_dir/labelstudio_tasks.json`` (import it) and ``out_dir/labelstudio_config.xml`` (the
    labeling config to paste); returns both paths."""
    out = Path(out_dir)
    names = item_classes(items, class_names)
    tasks = labelstudio_tasks(items, kind=kind, image_url_prefix=image_url_prefix, tolerance=tolerance)
    return [atomic_write_json(out / "labelstudio_tasks.json", tasks),
            atomic_write_text(out / "labelstudio_config.xml", labelstudio_config(names, kind=kind))]


# -- reading --------------------------------------------------------------------------------------------
def _result_mask(r: dict[str, Any], where: str) -> tuple[str, np.ndarray, tuple[int, int]] | None:
    kind = str(r.get("type", "")).lower()
    if kind not in ("brushlabels", "polygonlabels", "rectanglelabels"):
        return None  # choices, text areas, keypoints: no area
    try:
        h, w = int(r["original_height"]), int(r["original_width"])
        value = r["value"]
        label = str(value[kind][0])
        if kind == "brushlabels":
            m = brush_rle_decode(value["rle"], (h, w))
        elif kind == "polygonlabels":
            pts = np.asarray(value["points"], np.float64).reshape(-1, 2) / 100 * [w, h] - 0.5
            m = polygons_to_mask([Polygon(pts)], (h, w))
        else:
            x1, y1 = value["x"] / 100 * w, value["y"] / 100 * h
            m = np.zeros((h, w), bool)
            m[int(round(y1)) : int(round(y1 + value["height"] / 100 * h)), int(round(x1)) : int(round(x1 + value["width"] / 100 * w))] = True
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise DatasetError(f"{where}: cannot read this {kind} result ({type(e).__name__}: {e})") from None
    return label, m, (h, w)


def read_labelstudio(path: str | Path, *, images_dir: str | Path | None = None, use_predictions: bool = False,
                     class_names: Sequence[str] | None = None) -> list[LabeledImage]:
    """Read a Label Studio JSON export (a list of tasks): one :class:`LabeledImage` per task.

    Each task's first annotation that was not cancelled is read (``use_predictions``: its first
    prediction); results with the same ``id`` (Label Studio's object id; a polygon in several parts) make
    one object. Scores from the result's ``score`` (1.0 where absent). A task without area results is a
    background image when its image file is found (for its size), else left out. ``image_path``: ``images_dir`` /
    the file name of ``data.image`` (default: the URL or path as written). Class names: ``class_names``,
    else order of first appearance; ``class_ids`` = 1 + index.
    """
    path = Path(path)
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such Label Studio export") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(tasks, list):
        raise DatasetError(f"{path}: expected a Label Studio JSON export (a list of tasks), found {type(tasks).__name__}")
    names = list(class_names or [])
    out = []
    for t, task in enumerate(tasks):
        where = f"{path}: task {task.get('id', t)}"
        inst = _task_instances(task, use_predictions, names, class_names is None, where)
        image = str((task.get("data") or {}).get("image", ""))
        image_path = Path(images_dir) / image.rsplit("/", 1)[-1].split("=")[-1] if images_dir else Path(image)
        if inst is None and image_path.is_file():
            from PIL import Image

            with Image.open(image_path) as im:
                inst = Instances.empty((im.height, im.width))
        if inst is not None:
            out.append((image_path, inst))
    return [LabeledImage(p, inst, tuple(names)) for p, inst in out]


def _task_instances(task: dict, use_predictions: bool, names: list[str], grow: bool, where: str) -> Instances | None:
    """The task's objects; None when it has no area results (the image size is then unknown)."""
    runs = task.get("predictions" if use_predictions else "annotations") or []
    run = next((a for a in runs if not a.get("was_cancelled")), None)
    objects: dict[str, dict] = {}
    size = None
    for i, r in enumerate((run or {}).get("result") or []):
        got = _result_mask(r, f"{where}: result {i}")
        if got is None:
            continue
        label, m, size = got
        if label not in names:
            if not grow:
                raise DatasetError(f"{where}: result {i}: label {label!r} is not one of the classes {names}")
            names.append(label)
        o = objects.setdefault(str(r.get("id", i)), {"label": label, "mask": np.zeros_like(m), "score": float(r.get("score", 1.0))})
        o["mask"] |= m
    if size is None:
        return None
    labels = [o["label"] for o in objects.values()]
    return Instances.from_masks(np.stack([o["mask"] for o in objects.values()]), class_ids=[names.index(n) + 1 for n in labels],
                                labels=labels, scores=[o["score"] for o in objects.values()])
