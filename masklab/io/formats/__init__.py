"""Output formats: per-image files and run-level files written from :class:`Instances`, and readers back.

:class:`~masklab.io.formats.writer.OutputWriter` is what a run (CLI, batch pipeline, Ray engine) calls.
The readers (:func:`read_labelme`, :func:`read_yolo`, :func:`read_label_maps`) return ground truth and
double as dataset readers for training.
"""

from masklab.io.formats.common import LabeledImage, class_list
from masklab.io.formats.label_maps import read_label_maps, write_label_maps
from masklab.io.formats.labelme import read_labelme, write_labelme
from masklab.io.formats.writer import DEFAULT_FORMATS, FORMATS, OutputWriter
from masklab.io.formats.yolo import read_yolo, read_yolo_classes, write_yolo, write_yolo_classes

__all__ = [
    "OutputWriter",
    "FORMATS",
    "DEFAULT_FORMATS",
    "LabeledImage",
    "class_list",
    "read_labelme",
    "write_labelme",
    "read_yolo",
    "read_yolo_classes",
    "write_yolo",
    "write_yolo_classes",
    "read_label_maps",
    "write_label_maps",
]
