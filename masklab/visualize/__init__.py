"""Visualisers: each is ``annotate(image, instances) -> image`` with its style set in the constructor.

``image`` is RGB uint8 (H, W, 3); the result is a new RGB uint8 array of the same size.
"""

from __future__ import annotations

from masklab.visualize.instance import InstanceVisualizer

__all__ = ["InstanceVisualizer", "get_visualizer", "STYLES"]

STYLES = ("instance",)


def get_visualizer(style: str, **kwargs):
    """The visualiser for ``style`` (one of :data:`STYLES`)."""
    from masklab.errors import UsageError

    if style == "instance":
        return InstanceVisualizer(**kwargs)
    raise UsageError(f"unknown visualisation style {style!r}; choose from {', '.join(STYLES)} or none")
