"""Batch segmentation spread over many workers (Ray Data); ``pip install "masklab[ray]"``.

Importing this package does not import Ray or pyarrow: :func:`run_segment_ray` does, when it runs.
"""

from masklab.runs.ray.engine import driver_card, run_segment_ray, worker_settings
from masklab.runs.ray.storage import expand_sources

__all__ = ["driver_card", "expand_sources", "run_segment_ray", "worker_settings"]
