"""The easy tier of the API: :class:`Segmenter` (path / PIL / numpy in, :class:`~masklab.structures.instances.Instances` out)."""

from masklab.inference.segmenter import Segmenter
from masklab.inference.threads import available_cpus, configure_threads, resolve_device

__all__ = ["Segmenter", "configure_threads", "resolve_device", "available_cpus"]
