"""The matterport Mask R-CNN tutorial API on masklab: change only the import lines.

======================================  ==============================================
tutorial                                masklab
======================================  ==============================================
``from mrcnn import utils``             ``from masklab.compat.mrcnn import utils``
``import mrcnn.model as modellib``      ``import masklab.compat.mrcnn.model as modellib``
``from mrcnn import visualize``         ``from masklab.compat.mrcnn import visualize``
``from mrcnn.config import Config``     ``from masklab.compat.mrcnn.config import Config``
``import coco``                         ``from masklab.compat.mrcnn import coco``
======================================  ==============================================
"""

from masklab.compat.mrcnn import coco, config, model, utils, visualize

__all__ = ["coco", "config", "model", "utils", "visualize"]
