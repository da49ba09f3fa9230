"""Temporary: moved to :mod:`masklab.runtime.torch` and :mod:`masklab.structures.detections` (removed before this change lands)."""

from masklab.runtime.torch import TorchRuntime as TorchBackend
from masklab.runtime.torch import to_tensor_chw
from masklab.structures.detections import Detections

__all__ = ["Detections", "TorchBackend", "to_tensor_chw"]
