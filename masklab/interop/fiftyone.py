"""FiftyOne: predictions as a COCO detection dataset with masks that FiftyOne imports, or an
``fo.Dataset`` directly when fiftyone is installed.

:func:`write_fiftyone_dataset` writes ``DST/labels.json``: a COCO dataset whose annotations are the
predictions (compressed RLE masks, exact; ``score`` per object, which FiftyOne reads as ``confidence``),
image ``file_name`` as in the run (relative to the folder of images given as ``data_path``). To view
predictions next to ground truth in the FiftyOne app::

    import fiftyone as fo
    ds = fo.Dataset.from_dir(dataset_type=fo.types.COCODetectionDataset, data_path="photos/",
                             labels_path="gt/annotations.json", label_types="segmentations",
                             label_field="ground_truth")
    pred = fo.Dataset.from_dir(dataset_type=fo.types.COCODetectionDataset, data_path="photos/",
                               labels_path="fiftyone/labels.json", label_types="segmentations",
                               label_field="predictions")
    ds.merge_samples(pred)      # same images (by filepath): one sample with both fields
    ds.evaluate_detections("predictions_segmentations", gt_field="ground_truth_segmentations", use_masks=True)
    fo.launch_app(ds)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from masklab.interop.common import Item, coco_dataset
from masklab.io.atomic import atomic_write_json
from masklab.optional import require

__all__ = ["write_fiftyone_dataset", "to_fiftyone"]


def write_fiftyone_dataset(out_dir: str | Path, items: Sequence[Item], class_names: Sequence[str] | None = None) -> Path:
    """Write ``out_dir/labels.json`` (see the module docstring); returns its path."""
    return atomic_write_json(Path(out_dir) / "labels.json", coco_dataset(items, class_names, polygons=False))


def to_fiftyone(labels_path: str | Path, *, data_path: str | Path, name: str | None = None,
                label_field: str = "predictions") -> Any:
    """Load a :func:`write_fiftyone_dataset` file as an ``fo.Dataset`` (needs ``pip install fiftyone``).

    ``data_path``: the folder the images' ``file_name`` are relative to.
    """
    fo = require("fiftyone")
    return fo.Dataset.from_dir(dataset_type=fo.types.COCODetectionDataset, data_path=str(data_path),
                               labels_path=str(labels_path), label_types="segmentations", label_field=label_field,
                               name=name)
