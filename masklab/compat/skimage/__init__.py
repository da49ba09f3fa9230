"""``skimage.io.imread`` for the tutorial: ``from masklab.compat import skimage`` replaces ``import skimage.io``."""

from masklab.compat.skimage import io

__all__ = ["io"]
