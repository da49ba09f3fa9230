"""What the scientific readers share: read options, one plane of a stack, pixel sizes, intensity scaling.

A *stack* is any file with more than one 2-D image in it: a multi-page or OME-TIFF (Z/T planes), a
multi-frame DICOM, a NIfTI volume cut into slices, a GeoTIFF cut into windows. masklab segments every
plane as its own image (its own ``<stem>_p0003.json``), and the stack writers (``label-tiff``,
``imagej-roi``, ``nifti``, ``geojson``, ``gpkg``) put the planes back together at the end of the run.

Pixel sizes are always ``(x, y)`` = (column width, row height) of one pixel, in ``unit`` (``nm``, ``um``,
``mm``, ``cm``, ``m``), with ``source`` naming where they came from (e.g. ``"OME PhysicalSizeX/Y"``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from masklab.errors import UsageError

__all__ = [
    "ReadOptions",
    "Plane",
    "PixelSize",
    "ImageMeta",
    "StackInfo",
    "parse_planes",
    "parse_channels",
    "parse_window",
    "parse_axis",
    "scale_to_uint8",
    "window_to_uint8",
    "channels_to_rgb",
    "normalize_unit",
]

#: unit name -> metres, for the units scientific files use (ASCII names: they become CSV column names)
UNIT_METRES = {"nm": 1e-9, "um": 1e-6, "mm": 1e-3, "cm": 1e-2, "m": 1.0, "km": 1e3}
_UNIT_ALIASES = {
    "µm": "um", "μm": "um", "micron": "um", "microns": "um", "micrometer": "um", "micrometre": "um", "\\u00b5m": "um",
    "millimeter": "mm", "millimetre": "mm", "nanometer": "nm", "nanometre": "nm", "centimeter": "cm",
    "centimetre": "cm", "meter": "m", "metre": "m", "meters": "m", "metres": "m", "kilometer": "km",
}


def normalize_unit(unit: str | None) -> str | None:
    """``"µm"``, ``"micron"`` -> ``"um"``; a unit masklab does not know (``"pixel"``, ``""``) -> None."""
    if unit is None:
        return None
    u = str(unit).strip()
    u = _UNIT_ALIASES.get(u, _UNIT_ALIASES.get(u.lower(), u.lower() if u.lower() in UNIT_METRES else u))
    return u if u in UNIT_METRES else None


@dataclass(frozen=True)
class PixelSize:
    """One pixel's physical size: ``x`` (column width) and ``y`` (row height) in ``unit``; ``z`` the plane
    spacing (None when unknown or 2-D); ``source`` where it was read (recorded in the JSON)."""

    x: float
    y: float
    unit: str
    source: str
    z: float | None = None

    def __post_init__(self) -> None:
        if not (self.x > 0 and self.y > 0) or not (np.isfinite(self.x) and np.isfinite(self.y)):
            raise ValueError(f"PixelSize: expected positive sizes, found x={self.x}, y={self.y}")

    def to_json(self) -> dict[str, Any]:
        return {"x": self.x, "y": self.y, "z": self.z, "unit": self.unit, "source": self.source}

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> PixelSize | None:
        if not d:
            return None
        return cls(x=float(d["x"]), y=float(d["y"]), z=None if d.get("z") is None else float(d["z"]),
                   unit=str(d["unit"]), source=str(d.get("source", "")))


@dataclass(frozen=True)
class ReadOptions:
    """How stacks are read (the CLI's ``--planes``, ``--channels``, ``--window``, ``--axis``).

    ``planes``: plane indices to segment (None = all); ``channels``: channel indices mapped to R, G, B
    (one index = grey; None = the file's own colours or grey); ``window``: ``(center, width)`` of the
    intensity window for DICOM/NIfTI (None = the file's own window, or NIfTI's 1-99 % percentiles);
    ``axis``: the NIfTI voxel axis slices are cut across (0, 1 or 2; default 2, the k axis).
    """

    planes: tuple[int, ...] | None = None
    channels: tuple[int, ...] | None = None
    window: tuple[float, float] | None = None
    axis: int = 2

    def to_json(self) -> dict[str, Any]:
        return {"planes": None if self.planes is None else list(self.planes),
                "channels": None if self.channels is None else list(self.channels),
                "window": None if self.window is None else list(self.window), "axis": self.axis}


@dataclass(frozen=True)
class Plane:
    """One 2-D image of a stack file: ``index`` in ``0..count-1`` (for windows: the window number);
    ``stem``: the output stem of the whole file; ``window``: for rasters read by windows, the pixel
    window ``(col_off, row_off, width, height)``; ``keep``: the window's core ``(x0, y0, x1, y1)`` in
    window pixels: objects whose centroid falls outside it belong to a neighbouring window."""

    index: int
    count: int
    stem: str
    window: tuple[int, int, int, int] | None = None
    keep: tuple[int, int, int, int] | None = None
    intensity: tuple[float, float] | None = None  # (low, high) shared by every slice of a volume

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"index": self.index, "count": self.count, "stem": self.stem}
        if self.window is not None:
            d["window"] = list(self.window)
        return d


@dataclass(frozen=True)
class StackInfo:
    """What a reader's probe says about a file before any pixel is read: ``kind`` (``"tiff"``,
    ``"ome-tiff"``, ``"dicom"``, ``"nifti"``, ``"geotiff"``), ``count`` planes (or windows) of ``hw``
    pixels each, the pixel size, and per-plane extras (windows, the volume's intensity range)."""

    kind: str
    count: int
    hw: tuple[int, int]
    pixel_size: PixelSize | None = None
    windows: tuple[tuple[tuple[int, int, int, int], tuple[int, int, int, int]], ...] | None = None
    intensity: tuple[float, float] | None = None


@dataclass(frozen=True)
class ImageMeta:
    """What a scientific reader knows about the image it decoded: ``kind`` as in :class:`StackInfo`,
    the pixel size, the plane (None for a single image), and ``notes`` (e.g. the window used)."""

    kind: str
    pixel_size: PixelSize | None = None
    plane: Plane | None = None
    notes: dict[str, Any] = field(default_factory=dict)


# -- parsing the CLI's words -----------------------------------------------------------------------


def parse_planes(text: str | None) -> tuple[int, ...] | None:
    """``"0,3-5"`` -> ``(0, 3, 4, 5)`` (0-based, ranges inclusive); None or ``"all"`` -> None."""
    if text is None or text.strip().lower() in ("", "all"):
        return None
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise UsageError(f"--planes: expected indices and ranges such as 0,3-5 (0-based), found {part!r}")
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        if b < a:
            raise UsageError(f"--planes: range {part!r} runs backwards; write {b}-{a}")
        out.extend(range(a, b + 1))
    return tuple(sorted(set(out)))


def parse_channels(text: str | None) -> tuple[int, ...] | None:
    """``"1"`` (grey) or ``"2,0,1"`` (channels shown as R, G, B; 0-based) -> a tuple; None -> None."""
    if text is None or not text.strip():
        return None
    try:
        chans = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--channels: expected 1 to 3 channel indices such as 0 or 2,0,1, found {text!r}") from None
    if not 1 <= len(chans) <= 3 or min(chans) < 0:
        raise UsageError(f"--channels: expected 1 to 3 non-negative channel indices, found {text!r}")
    return chans


def parse_window(text: str | None) -> tuple[float, float] | None:
    """``"40,400"`` -> ``(40.0, 400.0)`` (window center, width in the file's values after the modality
    LUT, e.g. Hounsfield units); the width must be >= 1 (DICOM's rule)."""
    if text is None or not text.strip():
        return None
    try:
        c, w = (float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--window: expected CENTER,WIDTH such as 40,400, found {text!r}") from None
    if not w >= 1:
        raise UsageError(f"--window: the width must be >= 1 (DICOM PS3.3 C.11.2.1.2), found {w:g}")
    return c, w


def parse_axis(text: str | int | None) -> int:
    """``0|1|2`` or ``i|j|k`` (also ``x|y|z``: voxel axes, not anatomy) -> 0, 1, 2; None -> 2."""
    if text is None:
        return 2
    names = {"0": 0, "1": 1, "2": 2, "i": 0, "j": 1, "k": 2, "x": 0, "y": 1, "z": 2}
    key = str(text).strip().lower()
    if key not in names:
        raise UsageError(f"--axis: expected 0, 1 or 2 (or i, j, k), found {text!r}")
    return names[key]


# -- intensities ---------------------------------------------------------------------------------


def scale_to_uint8(a: np.ndarray, *, sixteen_bit: bool) -> np.ndarray:
    """Map one high-depth channel to uint8 without clipping: 16-bit integers by ``v * 255 / 65535``,
    floats in [0, 1] by 255, anything else stretched min..max to 0..255 (NaN/inf count as 0)."""
    a = a.astype(np.float64, copy=False)
    finite = np.isfinite(a)
    if not finite.all():
        a = np.where(finite, a, 0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if sixteen_bit and lo >= 0 and hi <= 65535:
        a = a * (255.0 / 65535.0)
    elif not sixteen_bit and lo >= 0 and hi <= 1.0:
        a = a * 255.0
    elif hi > lo:
        a = (a - lo) * (255.0 / (hi - lo))
    else:
        a = np.zeros_like(a)
    return np.round(a).astype(np.uint8)


def plane_to_uint8(a: np.ndarray) -> np.ndarray:
    """One channel of any dtype -> uint8 by the loader's rule: uint8 as is, 16-bit integers by the
    16-bit range, floats in [0, 1] by 255, anything else min..max (see :func:`scale_to_uint8`)."""
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    return scale_to_uint8(a, sixteen_bit=a.dtype.kind in "ui" and a.dtype.itemsize == 2)


def window_to_uint8(a: np.ndarray, center: float, width: float, *, function: str = "LINEAR") -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2's VOI functions to 0..255: ``LINEAR`` (the default: values at or below
    ``c - 0.5 - (w - 1) / 2`` -> 0, above ``c - 0.5 + (w - 1) / 2`` -> 255, linear between),
    ``LINEAR_EXACT`` (``c - w/2`` .. ``c + w/2``) and ``SIGMOID``. ``a``: the values after the modality LUT."""
    x = np.asarray(a, np.float64)
    fn = function.upper()
    if fn == "SIGMOID":
        y = 255.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    elif fn == "LINEAR_EXACT":
        y = np.clip((x - center) / width + 0.5, 0.0, 1.0) * 255.0
    else:
        if width < 1:
            raise ValueError(f"a LINEAR window needs width >= 1, found {width}")
        if width == 1:  # the standard's threshold form
            y = np.where(x > center - 0.5, 255.0, 0.0)
        else:
            y = np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0) * 255.0
    return np.round(y).astype(np.uint8)


def channels_to_rgb(chans: list[np.ndarray], *, name: str) -> np.ndarray:
    """1 to 3 uint8 (H, W) channels -> RGB (H, W, 3): one is grey, two are R and G (B = 0), three RGB."""
    if not 1 <= len(chans) <= 3:
        raise ValueError(f"{name}: expected 1 to 3 channels, found {len(chans)}")
    if len(chans) == 1:
        return np.repeat(chans[0][..., None], 3, axis=2)
    if len(chans) == 2:
        chans = [*chans, np.zeros_like(chans[0])]
    return np.ascontiguousarray(np.stack(chans, axis=-1))
