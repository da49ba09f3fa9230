"""Label TIFFs: instance-id images (0 = background, 1..N objects) with the pixel size in the metadata.

``labels/<stem>.tif``, one plane per input plane (a stack gives a ``(planes, H, W)`` stack; planes not
segmented are all 0), the shape of the input's planes. Up to 65535 labels: an ImageJ TIFF (uint16;
``XResolution``/``YResolution`` = pixels per unit, ImageJ ``unit`` and ``spacing``), which Fiji opens
calibrated and tifffile/napari read. More labels: uint32 OME-TIFF with ``PhysicalSizeX/Y/Z`` (Fiji reads
it through Bio-Formats). Without a pixel size the metadata says nothing physical.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from masklab.io.atomic import temp_file_beside
from masklab.io.planes import PixelSize
from masklab.optional import require

__all__ = ["write_label_tiff"]

_OME_UNIT = {"um": "µm", "nm": "nm", "mm": "mm", "cm": "cm", "m": "m", "km": "km"}


def write_label_tiff(path: str | Path, labels: np.ndarray, *, pixel_size: PixelSize | None) -> Path:
    """Write ``labels`` (uint (H, W) or (Z, H, W), 0 = background) to ``path`` atomically."""
    tifffile = require("tifffile")
    labels = np.asarray(labels)
    top = int(labels.max()) if labels.size else 0
    if top <= 65535:
        data = labels.astype(np.uint16, copy=False)
        meta: dict = {"axes": "ZYX" if data.ndim == 3 else "YX"}
        kwargs: dict = {"imagej": True}
        if pixel_size is not None:
            kwargs["resolution"] = (1.0 / pixel_size.x, 1.0 / pixel_size.y)
            meta["unit"] = "micron" if pixel_size.unit == "um" else pixel_size.unit
            if pixel_size.z is not None and data.ndim == 3:
                meta["spacing"] = pixel_size.z
        kwargs["metadata"] = meta
    else:
        data = labels.astype(np.uint32, copy=False)
        meta = {"axes": "ZYX" if data.ndim == 3 else "YX"}
        if pixel_size is not None:
            unit = _OME_UNIT[pixel_size.unit]
            meta.update(PhysicalSizeX=pixel_size.x, PhysicalSizeXUnit=unit, PhysicalSizeY=pixel_size.y, PhysicalSizeYUnit=unit)
            if pixel_size.z is not None and data.ndim == 3:
                meta.update(PhysicalSizeZ=pixel_size.z, PhysicalSizeZUnit=unit)
        kwargs = {"ome": True, "metadata": meta}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file_beside(path, suffix=".tif")
    os.close(fd)
    try:
        tifffile.imwrite(tmp, data, **kwargs)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
