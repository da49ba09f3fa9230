"""masklab: instance segmentation with Mask R-CNN — masks, labels, counts and measurements.

    from masklab import Segmenter
    seg = Segmenter()            # default COCO model
    inst = seg("photo.jpg")      # Instances: boxes, masks, scores, class_ids, labels, image_size
"""

from masklab._version import __version__
from masklab.errors import MasklabError
from masklab.inference import Segmenter
from masklab.io.images import load_image
from masklab.models.zoo import MODELS, ModelSpec
from masklab.settings import InferenceSettings
from masklab.structures.instances import Instances

__all__ = ["__version__", "Segmenter", "InferenceSettings", "Instances", "load_image", "MODELS", "ModelSpec", "MasklabError"]
