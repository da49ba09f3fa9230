"""Visualisers: each is ``annotate(image, instances) -> image`` with its style set in the constructor.

``image`` is RGB uint8 (H, W, 3); the result is a new RGB uint8 array of the same size. Pillow/OpenCV
and numpy only: no matplotlib needed to save a file.

    >>> from masklab.visualize import get_visualizer               # doctest: +SKIP
    >>> drawn = get_visualizer("semantic").annotate(rgb, instances)
"""

from __future__ import annotations

from enum import Enum

import numpy as np

from masklab.visualize._draw import class_color, instance_colors, side_by_side
from masklab.visualize.effects import BlurVisualizer, OutlineVisualizer, SplashVisualizer
from masklab.visualize.instance import InstanceVisualizer
from masklab.visualize.semantic import SemanticVisualizer

__all__ = [
    "plot",
    "Style",
    "STYLES",
    "get_visualizer",
    "render",
    "InstanceVisualizer",
    "SemanticVisualizer",
    "SplashVisualizer",
    "BlurVisualizer",
    "OutlineVisualizer",
    "instance_colors",
    "class_color",
    "side_by_side",
]


class Style(str, Enum):
    INSTANCE = "instance"  # a colour per object, box, caption
    SEMANTIC = "semantic"  # a colour per class, legend
    SPLASH = "splash"  # objects in colour, the rest grey
    BLUR = "blur"  # background blurred
    OUTLINE = "outline"  # contours only


STYLES = tuple(s.value for s in Style)

_CLASSES = {
    Style.INSTANCE: InstanceVisualizer,
    Style.SEMANTIC: SemanticVisualizer,
    Style.SPLASH: SplashVisualizer,
    Style.BLUR: BlurVisualizer,
    Style.OUTLINE: OutlineVisualizer,
}


def get_visualizer(style: str | Style, **kwargs):
    """The visualiser for ``style`` (one of :data:`STYLES`), built with ``kwargs``."""
    from masklab.errors import UsageError

    try:
        key = Style(style)
    except ValueError:
        raise UsageError(f"unknown visualisation style {style!r}; choose from {', '.join(STYLES)} or none") from None
    return _CLASSES[key](**kwargs)


def render(image: np.ndarray, instances, styles) -> np.ndarray:
    """Draw ``instances`` on RGB uint8 ``image`` in each style of ``styles``; several styles give one
    side-by-side picture with the style names on top (e.g. ``("instance", "semantic")``)."""
    vis = [get_visualizer(s) if isinstance(s, (str, Style)) else s for s in styles]
    panels = [v.annotate(image, instances) for v in vis]
    if len(panels) == 1:
        return panels[0]
    return side_by_side(panels, [str(Style(s).value) if isinstance(s, (str, Style)) else type(s).__name__ for s in styles])


def _rgb_array(image) -> np.ndarray:
    """RGB uint8 (H, W, 3) from an array, a PIL image, a :class:`~masklab.io.images.LoadedImage` (its
    ``.array``) or a path (opened with Pillow, EXIF orientation applied)."""
    if hasattr(image, "array"):
        return image.array
    if isinstance(image, np.ndarray):
        return image
    from PIL import Image, ImageOps

    if not isinstance(image, Image.Image):
        with Image.open(image) as im:
            image = ImageOps.exif_transpose(im).convert("RGB")
    return np.asarray(image.convert("RGB"))


def plot(image, instances, *, style: str | Style = "instance", ax=None):
    """Show ``instances`` drawn on ``image`` inline (matplotlib, optional: ``pip install 'masklab[plot]'``).

    ``image``: RGB uint8 (H, W, 3) array, PIL image, loaded image or path. Returns the matplotlib Axes."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("masklab.visualize.plot needs matplotlib: pip install 'masklab[plot]'") from e
    rgb = _rgb_array(image)
    drawn = get_visualizer(style).annotate(rgb, instances)
    if ax is None:
        _, ax = plt.subplots(figsize=(10, 10 * rgb.shape[0] / max(rgb.shape[1], 1)))
    ax.imshow(drawn)
    ax.axis("off")
    return ax
