"""Category name lists.

``COCO_TORCHVISION`` is torchvision's 91-entry list: the index *is* the COCO category id (1..90),
``"__background__"`` at 0 and ``"N/A"`` in the ids COCO never used. ``COCO_MRCNN`` is the matterport
tutorial's 81-name list (``class_names``), ``"BG"`` at 0 and the 80 classes in COCO id order.
"""

from __future__ import annotations

__all__ = ["COCO_TORCHVISION", "COCO_MRCNN", "COCO_NAMES"]

COCO_TORCHVISION: tuple[str, ...] = (
    "__background__", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck",
    "boat", "traffic light", "fire hydrant", "N/A", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "N/A", "backpack", "umbrella",
    "N/A", "N/A", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "N/A",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
    "N/A", "dining table", "N/A", "N/A", "toilet", "N/A", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "N/A", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip

#: The 80 COCO class names in category-id order.
COCO_NAMES: tuple[str, ...] = tuple(n for n in COCO_TORCHVISION[1:] if n != "N/A")

#: The tutorial's ``class_names``: index 0 is "BG", then the 80 COCO names (81 in all).
COCO_MRCNN: tuple[str, ...] = ("BG",) + COCO_NAMES
