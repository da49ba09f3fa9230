"""Optional dependencies: imported when first used, with the ``pip install`` line in the error."""

from __future__ import annotations

import importlib
import sys
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
        return _openvino() if module == "openvino" else importlib.import_module(module)
    except ImportError:
        extra = _EXTRA.get(module.split(".")[0], module)
        raise MissingDependencyError(f"{module} is not installed; install it with: pip install '{extra}'") from None


def _openvino() -> ModuleType:
    """``import openvino`` without its model converter, when nothing imported it before.

    openvino's ``__init__`` imports ``openvino.tools.ovc`` (~80 ms), and that import starts OpenVINO's
    telemetry: with no consent file (``~/intel/openvino_telemetry``) it counts as consent, writes a client
    id there and sends an event from a worker thread, which also keeps the process from exiting at once.
    Running a model needs none of it, and masklab promises no network at run time: the converter is left
    out (openvino's own ``try``/``except ImportError`` around that import allows it), and
    ``openvino.convert_model`` becomes a stand-in that imports the converter on its first call (a
    conversion: ``masklab models --prepare``, ``export``), where OpenVINO's own telemetry rules apply."""
    if "openvino" in sys.modules or "openvino.tools.ovc" in sys.modules:
        return importlib.import_module("openvino")
    sys.modules["openvino.tools.ovc"] = None  # type: ignore[assignment]  # "import it" raises ImportError
    try:
        ov = importlib.import_module("openvino")
    finally:
        if "openvino.tools.ovc" in sys.modules and sys.modules["openvino.tools.ovc"] is None:
            del sys.modules["openvino.tools.ovc"]
    if not hasattr(ov, "convert_model"):
        ov.convert_model = _convert_model
    return ov


def _convert_model(*args, **kwargs):
    """``openvino.convert_model``, its converter imported on first use (see :func:`_openvino`)."""
    from openvino.tools.ovc import convert_model

    return convert_model(*args, **kwargs)
