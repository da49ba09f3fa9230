"""Bridges to the tools people already use: supervision, FiftyOne, Label Studio and CVAT.

Each module converts masklab's :class:`~masklab.structures.instances.Instances` to and from one tool's
objects or files, and nothing else (no adapters inside ``Instances``):

- :mod:`masklab.interop.supervision`: ``to_supervision`` / ``from_supervision`` (``sv.Detections``);
- :mod:`masklab.interop.labelstudio`: pre-annotation tasks (brush RLE or polygons, with scores) and
  reading a Label Studio JSON export back;
- :mod:`masklab.interop.cvat`: "CVAT for images 1.1" XML (polygons and masks) and "COCO 1.0" export of
  predictions, and reading CVAT exports back;
- :mod:`masklab.interop.fiftyone`: a COCO detection dataset with masks that FiftyOne imports, or an
  ``fo.Dataset`` directly when fiftyone is installed.

The exports take ``items``: a sequence of ``(image_name, Instances)`` pairs, e.g. a finished run read
with :func:`read_run`. Third-party libraries are imported only inside the functions that need them.
"""

from masklab.interop.common import read_run
from masklab.interop.cvat import cvat_coco, read_cvat_xml, to_cvat_xml, write_cvat_coco, write_cvat_xml
from masklab.interop.fiftyone import to_fiftyone, write_fiftyone_dataset
from masklab.interop.labelstudio import labelstudio_tasks, read_labelstudio, write_labelstudio
from masklab.interop.supervision import from_supervision, to_supervision

__all__ = [
    "read_run",
    "to_supervision",
    "from_supervision",
    "labelstudio_tasks",
    "write_labelstudio",
    "read_labelstudio",
    "to_cvat_xml",
    "write_cvat_xml",
    "read_cvat_xml",
    "cvat_coco",
    "write_cvat_coco",
    "write_fiftyone_dataset",
    "to_fiftyone",
]
