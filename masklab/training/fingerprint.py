"""What a training set is, in a few numbers: :func:`data_fingerprint`, saved in ``settings.json`` so that
``--resume`` notices a dataset that changed under a run (:func:`data_change`).

The fingerprint is the image count, their total bytes, a sha256 over the sorted (file name, byte size)
list and a sha256 of the annotations as masklab read them (the completed COCO dict: every source format
goes through it, so a VIA or YOLO set is fingerprinted the same way). Image *contents* are not hashed
(a COCO-sized set would take minutes): an image replaced by another of exactly the same byte size goes
unnoticed unless its annotations changed too.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from masklab.errors import UsageError
from masklab.training.config import settings_path

__all__ = ["data_fingerprint", "data_change", "check_data"]


def data_fingerprint(ds) -> dict[str, Any]:
    """``{"images": int, "bytes": int, "files_sha256": hex, "annotations_sha256": hex}`` of ``ds`` (a
    :class:`~masklab.data.dataset.SegmentationDataset`); stats each image file once, reads none."""
    gt = ds.gt
    files = []
    for image_id in ds.image_ids:
        path = gt.image_path(image_id)
        files.append((gt.images[image_id].file_name, path.stat().st_size))
    files.sort()
    listing = "\n".join(f"{name}\t{size}" for name, size in files).encode("utf-8", "surrogateescape")
    # default=str: compressed RLE counts may be bytes; sort_keys: the same dict hashes the same.
    annotations = json.dumps(gt.dataset, sort_keys=True, default=str, ensure_ascii=True).encode()
    return {"images": len(files), "bytes": sum(s for _, s in files),
            "files_sha256": hashlib.sha256(listing).hexdigest(),
            "annotations_sha256": hashlib.sha256(annotations).hexdigest()}


def data_change(before: dict[str, Any] | None, now: dict[str, Any]) -> str | None:
    """What differs between two fingerprints, in words; None when they match (or ``before`` is None: a
    run started before masklab recorded fingerprints cannot be checked)."""
    if not before:
        return None
    diffs = []
    if before.get("files_sha256") != now["files_sha256"]:
        diffs.append(f"image files differ ({now['images']} images, {now['bytes']} bytes now; "
                     f"{before.get('images')} images, {before.get('bytes')} bytes when the run started)")
    if before.get("annotations_sha256") != now["annotations_sha256"]:
        diffs.append("annotations differ")
    return "; ".join(diffs) or None


def check_data(run_dir: Path, cfg, fingerprints: dict[str, dict | None], *, allow: bool) -> tuple[list[dict], list[dict]]:
    """Compare ``fingerprints`` (``{"data": .., "val": ..}`` of the sets ``cfg`` names) with the ones the
    run's ``settings.json`` recorded. UsageError on a change unless ``allow``; returns ``(changes recorded
    before, changes now)`` (each ``{"set", "path", "change"}``) for ``settings.json``."""
    old = json.loads(settings_path(run_dir).read_text(encoding="utf-8")).get("resolved", {})
    changes = []
    for key, flag in (("data", "--data"), ("val", "--val")):
        change = data_change(old.get(f"{key}_fingerprint"), fingerprints[key]) if fingerprints[key] else None
        if change is None:
            continue
        where = getattr(cfg, key)
        if not allow:
            raise UsageError(
                f"--resume {run_dir}: the {'training' if key == 'data' else 'validation'} set {where} has "
                f"changed since the run started: {change}. Resume with the run's data, or pass "
                f"--allow-data-change to continue on this data (settings.json records the change)")
        print(f"masklab: {flag} {where} changed since the run started ({change}); continuing on it "
              "(--allow-data-change)", file=sys.stderr)
        changes.append({"set": key, "path": where, "change": change})
    return list(old.get("data_changes", [])), changes
