"""Temporary: the Segmenter moved to :mod:`masklab.inference` (removed before this change lands)."""

from masklab.inference.segmenter import Segmenter
from masklab.inference.threads import configure_threads, resolve_device

__all__ = ["Segmenter", "configure_threads", "resolve_device"]
