"""Multi-page, ImageJ and OME-TIFF stacks through tifffile: every Z/T plane, channel choice, pixel size.

A file's first series gives the axes (tifffile's letters: ``T`` time, ``Z`` depth, ``C`` channel, ``S``
samples of one page such as RGB, ``Y X`` rows and columns). A *plane* is one combination of the axes
other than ``C``, ``S``, ``Y``, ``X``, numbered in C order (for ``TZCYX``: ``t * Z + z``).

Channels: ``S`` samples (RGB pages) keep their colours; a ``C`` axis of 1 is grey, of 2 or 3 maps
channels 0, 1, 2 to R, G, B; more than 3 channels need ``--channels`` (1 index = grey, up to 3 = RGB).
Each channel is scaled to uint8 by the loader's rule (:func:`masklab.io.planes.plane_to_uint8`).

Pixel size, in this order: OME ``PhysicalSizeX/Y`` (and ``Z``) with their units (default µm); the
ImageJ header's ``unit`` with the resolution tags (and ``spacing`` for Z); ``XResolution/YResolution``
with ``ResolutionUnit`` = centimetre. Resolution in dots per inch is a print setting (72 dpi on every
screenshot) and is not taken as a physical size.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

from masklab.errors import ImageLoadError
from masklab.io.planes import (
    UNIT_METRES,
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

__all__ = ["probe_tiff", "read_tiff_plane", "tiff_route", "tiff_pixel_size", "plain_tiff_meta", "GEO_TAGS"]

#: GeoTIFF tags (ModelPixelScale, ModelTiepoint, ModelTransformation, GeoKeyDirectory)
GEO_TAGS = (33550, 33922, 34264, 34735)


class _Layout:
    """The first series' axes split into plane axes, a channel axis and the page shape."""

    def __init__(self, series, name: str) -> None:
        axes, shape = series.axes, tuple(series.shape)
        self.samples = axes.endswith("S")
        core = 3 if self.samples else 2
        if not axes[-core:].startswith("YX"):
            raise ImageLoadError(f"{name}: expected the last TIFF axes to be YX or YXS, found {axes!r}")
        self.page_axes, self.page_shape = axes[:-core], shape[:-core]
        self.hw = (int(shape[-core]), int(shape[-core + 1]))
        self.n_samples = int(shape[-1]) if self.samples else 1
        self.c_pos = self.page_axes.find("C")
        self.n_channels = int(self.page_shape[self.c_pos]) if self.c_pos >= 0 else self.n_samples
        self.plane_shape = tuple(n for i, n in enumerate(self.page_shape) if i != self.c_pos)
        self.count = int(np.prod(self.plane_shape)) if self.plane_shape else 1
        if self.c_pos >= 0 and self.samples and self.n_samples > 1:
            raise ImageLoadError(f"{name}: a TIFF with both a channel axis and RGB samples ({axes!r}) is not supported")

    def pages(self, plane: int, channel: int) -> int:
        """The series page holding channel ``channel`` of plane ``plane``."""
        idx = list(np.unravel_index(plane, self.plane_shape)) if self.plane_shape else []
        if self.c_pos >= 0:
            idx.insert(self.c_pos, channel)
        return int(np.ravel_multi_index(idx, self.page_shape)) if self.page_shape else 0


def _open(path: Path, name: str):
    tifffile = require("tifffile")
    try:
        return tifffile.TiffFile(path)
    except Exception as e:  # tifffile raises TiffFileError, ValueError, struct.error, ... on broken files
        raise ImageLoadError(f"{name}: corrupt TIFF ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def tiff_route(path: Path) -> str | None:
    """Which reader a TIFF needs, from one look at its header: ``"geotiff"`` (GeoTIFF tags, and rasterio is
    installed), ``"tiff"`` (more than one plane, an OME or ImageJ header, a channel axis, or a dtype
    Pillow cannot read: tifffile), or None (a plain single image: Pillow, as before; also when tifffile
    is missing or the header is broken, so Pillow's reader gives its one-line reason)."""
    try:
        tifffile = require("tifffile")
    except ImportError:
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            if any(t in tif.pages[0].tags for t in GEO_TAGS):
                try:
                    require("rasterio")
                    return "geotiff"
                except ImportError:
                    pass
            if tif.is_ome or tif.is_imagej or len(tif.series) == 0:
                return "tiff"
            series = tif.series[0]
            lay = _Layout(series, str(path))
            stack = lay.count > 1 or lay.c_pos >= 0 or series.dtype not in (np.uint8, np.uint16) or lay.n_samples not in (1, 3, 4)
            return "tiff" if stack else None
    except Exception:  # broken files: let Pillow's reader give its one-line reason
        return None


def _ome_pixel_size(tif) -> PixelSize | None:
    try:
        root = ET.fromstring(tif.ome_metadata)
    except (ET.ParseError, TypeError, ValueError):
        return None
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None or pixels.get("PhysicalSizeX") is None:
        return None
    sizes = {}
    for ax in "XYZ":
        v = pixels.get(f"PhysicalSize{ax}")
        if v is None:
            continue
        unit = normalize_unit(pixels.get(f"PhysicalSize{ax}Unit", "µm"))
        if unit is None:
            return None
        sizes[ax] = float(v) * UNIT_METRES[unit] / UNIT_METRES["um"]
    if "Y" not in sizes:
        sizes["Y"] = sizes["X"]
    return PixelSize(x=sizes["X"], y=sizes["Y"], z=sizes.get("Z"), unit="um", source="OME PhysicalSizeX/Y")


def _resolution(page) -> tuple[float, float] | None:
    """Pixels per unit (x, y) from XResolution/YResolution, or None."""
    tags = page.tags
    if "XResolution" not in tags:
        return None
    xr = tags["XResolution"].value
    yr = tags["YResolution"].value if "YResolution" in tags else xr
    x = xr[0] / xr[1] if isinstance(xr, tuple) and xr[1] else float(xr if not isinstance(xr, tuple) else 0)
    y = yr[0] / yr[1] if isinstance(yr, tuple) and yr[1] else float(yr if not isinstance(yr, tuple) else 0)
    return (x, y) if x > 0 and y > 0 and math.isfinite(x) and math.isfinite(y) else None


def tiff_pixel_size(tif) -> PixelSize | None:
    """The pixel size a TIFF states (OME, then ImageJ, then centimetre resolution tags), or None."""
    if tif.is_ome:
        ps = _ome_pixel_size(tif)
        if ps is not None:
            return ps
    page = tif.pages[0]
    res = _resolution(page)
    if res is None:
        return None
    if tif.is_imagej:
        meta = tif.imagej_metadata or {}
        unit = normalize_unit(meta.get("unit"))
        if unit is not None:
            z = meta.get("spacing")
            return PixelSize(x=1 / res[0], y=1 / res[1], z=float(z) if z else None, unit=unit, source="ImageJ unit + resolution tags")
    runit = page.tags["ResolutionUnit"].value if "ResolutionUnit" in page.tags else 2
    if int(runit) == 3:  # centimetre
        return PixelSize(x=1e4 / res[0], y=1e4 / res[1], unit="um", source="TIFF XResolution/YResolution (cm)")
    return None


def probe_tiff(path: Path, *, name: str, options: ReadOptions) -> StackInfo:
    """Planes, plane size and pixel size of a TIFF, from its header."""
    with _open(path, name) as tif:
        if not tif.series:
            raise ImageLoadError(f"{name}: the TIFF holds no image series")
        lay = _Layout(tif.series[0], name)
        return StackInfo(kind="ome-tiff" if tif.is_ome else "tiff", count=lay.count, hw=lay.hw, pixel_size=tiff_pixel_size(tif))


def _channel_list(lay: _Layout, options: ReadOptions, name: str) -> list[int] | None:
    """The channels to read, or None for "RGB samples as stored"."""
    if options.channels is not None:
        bad = [c for c in options.channels if c >= lay.n_channels]
        if bad:
            raise ImageLoadError(f"{name}: --channels {bad[0]} is out of range: the file has {lay.n_channels} channel(s), 0..{lay.n_channels - 1}")
        return list(options.channels)
    if lay.samples and lay.c_pos < 0:
        return None if lay.n_samples in (3, 4) else list(range(min(3, lay.n_samples)))
    if lay.n_channels > 3:
        raise ImageLoadError(
            f"{name}: {lay.n_channels} channels; choose up to 3 with --channels (e.g. --channels 0 for grey, 0,1,2 for RGB)"
        )
    return list(range(lay.n_channels))


def read_tiff_plane(path: Path, *, name: str, plane: Plane | None, options: ReadOptions, cap: int) -> tuple[np.ndarray, ImageMeta]:
    """Plane ``plane.index`` (plane 0 when None) as RGB uint8 (H, W, 3), with its pixel size."""
    index = 0 if plane is None else plane.index
    with _open(path, name) as tif:
        if not tif.series:
            raise ImageLoadError(f"{name}: the TIFF holds no image series")
        lay = _Layout(tif.series[0], name)
        h, w = lay.hw
        if h * w > cap:
            raise ImageLoadError(f"{name}: {w}x{h} = {w * h:,} pixels per plane is over the cap of {cap:,} (raise it with MASKLAB_MAX_PIXELS)")
        if not 0 <= index < lay.count:
            raise ImageLoadError(f"{name}: plane {index} does not exist (the file has {lay.count} planes, 0..{lay.count - 1})")
        chans = _channel_list(lay, options, name)
        try:
            rgb = _read_channels(tif, lay, index, chans, name)
        except ImageLoadError:
            raise
        except Exception as e:  # codec errors, truncated strips
            raise ImageLoadError(f"{name}: corrupt or truncated TIFF plane {index} ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        meta = ImageMeta(kind="ome-tiff" if tif.is_ome else "tiff", pixel_size=tiff_pixel_size(tif), plane=plane,
                         notes=_notes(lay, chans))
    return rgb, meta


def _read_channels(tif, lay: _Layout, index: int, chans: list[int] | None, name: str) -> np.ndarray:
    if lay.samples and lay.c_pos < 0:
        page = tif.asarray(series=0, key=lay.pages(index, 0))
        if chans is None:
            page = page[..., :3]
            if page.dtype == np.uint8:
                return np.ascontiguousarray(page)
            return channels_to_rgb([plane_to_uint8(page[..., c]) for c in range(3)], name=name)
        return channels_to_rgb([plane_to_uint8(page[..., c]) for c in chans], name=name)
    assert chans is not None
    return channels_to_rgb([plane_to_uint8(np.asarray(tif.asarray(series=0, key=lay.pages(index, c)))) for c in chans], name=name)


def _notes(lay: _Layout, chans: list[int] | None) -> dict[str, Any]:
    return {"planes": lay.count, "channels": "RGB samples" if chans is None else chans}


def plain_tiff_meta(path: Path) -> ImageMeta | None:
    """The pixel size of a plain TIFF read by Pillow (None without tifffile or resolution tags)."""
    try:
        tifffile = require("tifffile")
    except ImportError:
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            ps = tiff_pixel_size(tif)
    except Exception:  # the pixels decoded; unreadable tags only lose the pixel size
        return None
    return None if ps is None else ImageMeta(kind="tiff", pixel_size=ps)
