"""Datasets: readers for COCO, VIA, LabelMe, Pascal VOC and YOLO-seg behind one interface, the synthetic
shapes set, ``validate`` and ``convert``.

    >>> from masklab.data import open_dataset          # doctest: +SKIP
    >>> ds = open_dataset("data/train")                # format detected from the path
    >>> sample = ds[0]                                 # Sample(image, target: Instances, image_id)
"""

from masklab.data.convert import convert_dataset
from masklab.data.dataset import Sample, SegmentationDataset, open_dataset
from masklab.data.readers import detect_format, read_dataset
from masklab.data.shapes import write_shapes
from masklab.data.validate import validate_dataset

__all__ = [
    "Sample",
    "SegmentationDataset",
    "open_dataset",
    "read_dataset",
    "detect_format",
    "validate_dataset",
    "convert_dataset",
    "write_shapes",
]
