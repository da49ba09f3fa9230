"""Optional dependencies: imported when first used, with the ``pip install`` line in the error."""

from __future__ import annotations

import importlib
from types import ModuleType

from masklab.errors import MissingDependencyError

__all__ = ["require"]

#: top-level module -> the extra that installs it
_EXTRA = {"onnx": "masklab[onnx]", "onnxruntime": "masklab[onnx]", "openvino": "masklab[openvino]", "nncf": "masklab[int8]",
          "matplotlib": "masklab[plot]", "ray": "masklab[ray]", "fastapi": "masklab[serve]", "uvicorn": "masklab[serve]",
          "filterpy": "masklab[track]", "scipy": "masklab[track]", "motmetrics": "masklab[track]",
          "supervision": "masklab[supervision]", "fiftyone": "fiftyone",
          **{m: "masklab[formats]" for m in ("tifffile", "roifile", "pydicom", "nibabel", "rasterio", "pyproj", "shapely",
                                             "geopandas", "pyogrio", "highdicom")},
          "segment_anything": "masklab[sam]"}


def require(module: str) -> ModuleType:
    """Import ``module``, or raise :class:`MissingDependencyError` naming the pip line that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = _EXTRA.get(module.split(".")[0], module)
        raise MissingDependencyError(f"{module} is not installed; install it with: pip install '{extra}'") from None
