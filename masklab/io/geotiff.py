"""Georeferenced rasters (GeoTIFF) through rasterio, read by windows so any size fits in memory.

A raster whose width x height is over the pixel cap is cut into windows of at most ``GEO_WINDOW``
pixels a side (and under the cap): square *cores* tiling the raster, each read with ``overlap`` pixels
of context on every side. Each window is segmented as its own image (with step 12's tiling inside it
when ``--tile`` asks), and an object belongs to the window whose core holds its centroid, so objects in
the overlaps are written once. Objects larger than the overlap are cut at window edges. A raster under
the cap is one window (the whole raster).

Bands: as for TIFF channels (first 3 bands as RGB, one band grey; ``--channels`` picks, 0-based), each
scaled to uint8 by the loader's rule. Nodata pixels (the dataset mask) become 0. Pixel size: the
transform's pixel width and height in the CRS's linear unit when the CRS is projected (a geographic CRS
has degrees, not a length: the geo writers compute areas in m² themselves).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from masklab.errors import ImageLoadError
from masklab.io.planes import (
    ImageMeta,
    PixelSize,
    Plane,
    ReadOptions,
    StackInfo,
    channels_to_rgb,
    normalize_unit,
    plane_to_uint8,
)
from masklab.optional import require

__all__ = ["probe_geotiff", "read_geotiff_window", "geo_windows", "GEO_WINDOW", "GEO_OVERLAP"]

GEO_WINDOW = 4096
GEO_OVERLAP = 128


def _open(path: Path, name: str):
    rasterio = require("rasterio")
    try:
        return rasterio.open(path)
    except Exception as e:  # RasterioIOError and friends
        raise ImageLoadError(f"{name}: cannot open the raster ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def geo_windows(width: int, height: int, *, cap: int, side: int = GEO_WINDOW, overlap: int = GEO_OVERLAP):
    """``((col_off, row_off, w, h), (x0, y0, x1, y1) core in window pixels)`` for every window, row by row;
    one window when ``width * height <= cap``."""
    if width * height <= cap:
        return ((((0, 0, width, height)), (0, 0, width, height)),)
    side = max(64, min(side, math.isqrt(cap)))
    overlap = min(overlap, side // 8)
    core = side - 2 * overlap
    out = []
    for y in range(0, height, core):
        for x in range(0, width, core):
            c0, r0 = max(0, x - overlap), max(0, y - overlap)
            c1, r1 = min(width, x + core + overlap), min(height, y + core + overlap)
            keep = (x - c0, y - r0, min(x + core, width) - c0, min(y + core, height) - r0)
            out.append(((c0, r0, c1 - c0, r1 - r0), keep))
    return tuple(out)


def _pixel_size(ds) -> PixelSize | None:
    t = ds.transform
    if ds.crs is None or not ds.crs.is_projected or t.b != 0 or t.d != 0:
        return None
    unit = normalize_unit(ds.crs.linear_units)
    if unit is None:
        return None
    return PixelSize(x=abs(t.a), y=abs(t.e), unit=unit, source=f"GeoTIFF transform (CRS unit: {ds.crs.linear_units})")


def probe_geotiff(path: Path, *, name: str, options: ReadOptions, cap: int) -> StackInfo:
    with _open(path, name) as ds:
        windows = geo_windows(ds.width, ds.height, cap=cap)
        return StackInfo(kind="geotiff", count=len(windows), hw=(ds.height, ds.width), pixel_size=_pixel_size(ds), windows=windows)


def _bands(count: int, options: ReadOptions, name: str) -> list[int]:
    if options.channels is not None:
        bad = [c for c in options.channels if c >= count]
        if bad:
            raise ImageLoadError(f"{name}: --channels {bad[0]} is out of range: the raster has {count} band(s), 0..{count - 1}")
        return [c + 1 for c in options.channels]
    return list(range(1, min(3, count) + 1))


def read_geotiff_window(path: Path, *, name: str, plane: Plane | None, options: ReadOptions, cap: int) -> tuple[np.ndarray, ImageMeta]:
    """Window ``plane.window`` (the whole raster when None, if under the cap) as RGB uint8 (h, w, 3)."""
    from rasterio.windows import Window

    with _open(path, name) as ds:
        if plane is None or plane.window is None:
            if ds.width * ds.height > cap:
                raise ImageLoadError(
                    f"{name}: {ds.width}x{ds.height} = {ds.width * ds.height:,} pixels is over the cap of {cap:,}; "
                    "masklab segment reads such rasters window by window"
                )
            window = (0, 0, ds.width, ds.height)
        else:
            window = plane.window
        bands = _bands(ds.count, options, name)
        try:
            data = ds.read(bands, window=Window(*window), masked=True)
        except Exception as e:  # decode errors in a block
            raise ImageLoadError(f"{name}: cannot read window {window} ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        nodata = np.ma.getmaskarray(data).any(axis=0)
        chans = [plane_to_uint8(np.ma.filled(band, 0)) for band in data]
        rgb = channels_to_rgb(chans, name=name)
        rgb[nodata] = 0
        meta = ImageMeta(kind="geotiff", pixel_size=_pixel_size(ds), plane=plane,
                         notes={"bands": bands, "nodata_pixels": int(nodata.sum()), "crs": None if ds.crs is None else ds.crs.to_string()})
    return rgb, meta
