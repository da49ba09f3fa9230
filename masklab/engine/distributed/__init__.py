"""Batch segmentation spread over many workers (Ray Data); ``pip install "masklab[ray]"``.

Importing this package does not import Ray: :func:`run_segment_ray` does, when it runs.
"""

from masklab.engine.distributed.ray_engine import run_segment_ray
from masklab.engine.distributed.storage import expand_sources

__all__ = ["expand_sources", "run_segment_ray"]
