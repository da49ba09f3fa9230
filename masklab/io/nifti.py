"""NIfTI volumes (``.nii``, ``.nii.gz``) through nibabel, segmented slice by slice.

Slices are cut across one voxel axis, ``--axis`` (0, 1 or 2 = i, j, k; default 2, k: the slice axis of
most scans, axial for axial acquisitions). With the two other axes ``a < b``, slice ``s`` is the image
``volume[..., s, ...].T``: image rows follow ``b`` and columns follow ``a``, with no flip, so a label
slice goes back into the volume at exactly the voxels it came from (the ``nifti`` writer does that).

Intensities: the header's ``scl_slope``/``scl_inter`` applied (nibabel does), then a window mapped to
0..255 that is the same for every slice of the volume: ``--window CENTER,WIDTH`` when given (the DICOM
LINEAR function), else the 1st..99th percentile of the volume (of at most ~16 M voxels sampled on a
regular grid). Voxel size: the header's zooms, in its spatial unit (``mm``, ``um``, ``m``; an unknown
unit code is taken as mm, as NIfTI tools do, and the source says so). 4-D files must have one volume.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from masklab.errors import ImageLoadError
from masklab.io.planes import ImageMeta, PixelSize, Plane, ReadOptions, StackInfo, window_to_uint8
from masklab.optional import require

__all__ = ["probe_nifti", "read_nifti_plane", "volume_percentiles", "slice_axes"]

_SAMPLE_VOXELS = 1 << 24
_UNITS = {"mm": "mm", "micron": "um", "meter": "m"}


def _load(path: Path, name: str):
    nib = require("nibabel")
    try:
        img = nib.load(str(path))
    except Exception as e:  # ImageFileError, gzip errors, bad headers
        raise ImageLoadError(f"{name}: corrupt NIfTI ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    shape = tuple(int(v) for v in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) != 3:
        raise ImageLoadError(f"{name}: expected a 3-D NIfTI volume, found shape {tuple(img.shape)} (extract one volume of a 4-D series first, e.g. with fslroi)")
    return img, shape


def slice_axes(axis: int) -> tuple[int, int]:
    """The two in-plane voxel axes ``(a, b)`` of slices across ``axis``: columns follow a, rows follow b."""
    a, b = (ax for ax in range(3) if ax != axis)
    return a, b


def _pixel_size(img, axis: int) -> PixelSize | None:
    zooms = [float(z) for z in img.header.get_zooms()[:3]]
    while len(zooms) < 3:
        zooms.append(1.0)
    space = img.header.get_xyzt_units()[0]
    unit = _UNITS.get(space, "mm")
    source = "NIfTI header zooms" if space in _UNITS else "NIfTI header zooms (unit code unknown: taken as mm)"
    a, b = slice_axes(axis)
    if zooms[a] <= 0 or zooms[b] <= 0:
        return None
    return PixelSize(x=zooms[a], y=zooms[b], z=zooms[axis] if zooms[axis] > 0 else None, unit=unit, source=source)


def volume_percentiles(img, shape: tuple[int, int, int], *, low: float = 1.0, high: float = 99.0) -> tuple[float, float]:
    """The ``low``..``high`` percentiles of the volume's values, from a regular sample of <= 16 M voxels."""
    step = max(1, int(np.ceil((np.prod(shape) / _SAMPLE_VOXELS) ** (1 / 3))))
    data = np.asanyarray(img.dataobj[::step, ::step, ::step] if len(img.shape) == 3 else img.dataobj[::step, ::step, ::step, 0])
    values = np.asarray(data, np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(values, [low, high]))
    return lo, hi


def probe_nifti(path: Path, *, name: str, options: ReadOptions) -> StackInfo:
    img, shape = _load(path, name)
    a, b = slice_axes(options.axis)
    intensity = None if options.window is not None else volume_percentiles(img, shape)
    return StackInfo(kind="nifti", count=shape[options.axis], hw=(shape[b], shape[a]),
                     pixel_size=_pixel_size(img, options.axis), intensity=intensity)


def _slice(img, axis: int, index: int) -> np.ndarray:
    key: list = [slice(None)] * 3
    key[axis] = index
    if len(img.shape) == 4:
        key.append(0)
    data = np.asanyarray(img.dataobj[tuple(key)])
    if data.ndim == 1:  # a 2-D file stored as (X, Y, 1): the slice lost an axis of length 1
        data = data[:, None]
    return np.asarray(data).T


def read_nifti_plane(path: Path, *, name: str, plane: Plane | None, options: ReadOptions, cap: int) -> tuple[np.ndarray, ImageMeta]:
    """Slice ``plane.index`` (0 when None) across ``options.axis`` as RGB uint8 (H, W, 3)."""
    img, shape = _load(path, name)
    axis = options.axis
    a, b = slice_axes(axis)
    if shape[a] * shape[b] > cap:
        raise ImageLoadError(f"{name}: {shape[a]}x{shape[b]} voxels per slice is over the pixel cap of {cap:,} (raise it with MASKLAB_MAX_PIXELS)")
    index = 0 if plane is None else plane.index
    if not 0 <= index < shape[axis]:
        raise ImageLoadError(f"{name}: slice {index} does not exist (axis {axis} has {shape[axis]} slices, 0..{shape[axis] - 1})")
    values = _slice(img, axis, index).astype(np.float64)
    if options.window is not None:
        center, width = options.window
        grey = window_to_uint8(values, center, width)
        window = {"center": center, "width": width, "source": "--window"}
    else:
        lo, hi = plane.intensity if plane is not None and plane.intensity is not None else volume_percentiles(img, shape)
        width = max(hi - lo, 1e-12)
        grey = np.round(np.clip((np.nan_to_num(values) - lo) / width, 0, 1) * 255).astype(np.uint8)
        window = {"low": lo, "high": hi, "source": "volume 1..99 % percentiles"}
    rgb = np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
    meta = ImageMeta(kind="nifti", pixel_size=_pixel_size(img, axis), plane=plane,
                     notes={"axis": axis, "slices": shape[axis], "window": window})
    return rgb, meta
