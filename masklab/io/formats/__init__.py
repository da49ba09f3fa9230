"""Output formats: per-image files and run-level files written from :class:`Instances`.

:class:`~masklab.io.formats.writer.OutputWriter` is what a run (CLI, batch pipeline, Ray engine) calls.
"""

from masklab.io.formats.writer import OutputWriter

__all__ = ["OutputWriter"]
