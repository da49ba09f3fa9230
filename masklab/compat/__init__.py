"""Compatibility layers: run code written for other libraries with masklab underneath.

- :mod:`masklab.compat.mrcnn`: the matterport Mask R-CNN tutorial API (``utils``, ``model``,
  ``visualize``, ``config``, ``coco``); change only the import lines.
- :mod:`masklab.compat.skimage`: ``skimage.io.imread`` for the tutorial, without installing scikit-image.
"""
