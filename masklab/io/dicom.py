"""DICOM images through pydicom: modality LUT, then the VOI window, MONOCHROME1, RGB, multi-frame, mm.

The display pipeline of DICOM PS3.4 (Grayscale Standard Display Function chain), in that order:

1. **Modality LUT**: ``RescaleSlope``/``RescaleIntercept`` (or a Modality LUT Sequence) turn stored values
   into the modality's units (Hounsfield units for CT) — pydicom's ``apply_modality_lut``.
2. **VOI LUT**: ``--window CENTER,WIDTH`` when given, else the file's first ``WindowCenter``/``WindowWidth``
   with its ``VOILUTFunction`` (LINEAR by default, LINEAR_EXACT, SIGMOID; PS3.3 C.11.2.1.2), mapped to
   0..255 (:func:`masklab.io.planes.window_to_uint8`); else a VOI LUT Sequence (pydicom's ``apply_voi``);
   else the frame's min..max.
3. **MONOCHROME1** (0 = white) is inverted after the window, so bone is bright as in every viewer.

RGB (and YBR, converted by pydicom) frames are used as they are. Each frame of a multi-frame file is a
plane. Pixel size: ``PixelSpacing`` (row, column spacing in mm; or the enhanced files' shared Pixel
Measures), else ``ImagerPixelSpacing`` (at the detector); plane spacing ``SpacingBetweenSlices`` or
``SliceThickness``. A compressed transfer syntax whose decoder is not installed is refused naming the
packages that decode it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from masklab.errors import ImageLoadError
from masklab.io.planes import ImageMeta, PixelSize, Plane, ReadOptions, StackInfo, window_to_uint8
from masklab.optional import require

__all__ = ["probe_dicom", "read_dicom_plane", "dicom_pixel_size"]

#: pydicom's requirement names -> the pip package, where they differ
_PIP = {"gdcm": "python-gdcm"}


def _read_header(path: Path, name: str):
    pydicom = require("pydicom")
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as e:  # InvalidDicomError, EOFError, struct errors on broken files
        raise ImageLoadError(f"{name}: corrupt DICOM ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def _first(v) -> float:
    try:
        return float(v[0])
    except TypeError:
        return float(v)


def dicom_pixel_size(ds) -> PixelSize | None:
    """PixelSpacing (enhanced or classic) or ImagerPixelSpacing, in mm; None if the file has neither."""
    spacing, source = None, ""
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        measures = shared[0].get("PixelMeasuresSequence")
        if measures and "PixelSpacing" in measures[0]:
            spacing, source = measures[0].PixelSpacing, "DICOM Shared Pixel Measures PixelSpacing"
    if spacing is None and "PixelSpacing" in ds:
        spacing, source = ds.PixelSpacing, "DICOM PixelSpacing"
    if spacing is None and "ImagerPixelSpacing" in ds:
        spacing, source = ds.ImagerPixelSpacing, "DICOM ImagerPixelSpacing (at the detector)"
    if spacing is None:
        return None
    z = ds.get("SpacingBetweenSlices") or ds.get("SliceThickness")
    try:
        row, col = (float(v) for v in spacing)
        return PixelSize(x=col, y=row, z=float(z) if z else None, unit="mm", source=source)
    except (TypeError, ValueError):
        return None


def _frames(ds) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def probe_dicom(path: Path, *, name: str, options: ReadOptions) -> StackInfo:
    ds = _read_header(path, name)
    if "Rows" not in ds or "Columns" not in ds:
        raise ImageLoadError(f"{name}: a DICOM file without an image (no Rows/Columns; e.g. a report or a structure set)")
    return StackInfo(kind="dicom", count=_frames(ds), hw=(int(ds.Rows), int(ds.Columns)), pixel_size=dicom_pixel_size(ds))


def _check_decoder(ds, name: str) -> None:
    from pydicom.pixels import get_decoder

    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if uid is None or not uid.is_compressed:
        return
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise ImageLoadError(f"{name}: DICOM transfer syntax {uid.name} ({uid}) has no pixel decoder in pydicom") from None
    if not decoder.is_available:
        options = "; ".join(_install_line(d) for d in decoder.missing_dependencies)
        raise ImageLoadError(
            f"{name}: compressed DICOM ({uid.name}) and no decoder for it is installed; "
            f"install one of: {options}"
        )


def _install_line(requirement: str) -> str:
    """pydicom's ``"pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-openjpeg>=2.0"`` -> ``"pip install
    pylibjpeg pylibjpeg-openjpeg"`` (GDCM's wheel is ``python-gdcm``)."""
    plugin, _, needs = requirement.partition(" - requires ")
    names = [re.split(r"[<>=!~ ]", n.strip(), maxsplit=1)[0] for n in needs.split(" and ") if n.strip()]
    names = [_PIP.get(n, n) for n in names if n and n != "numpy"] or [_PIP.get(plugin.strip(), plugin.strip())]
    return f"pip install {' '.join(names)}"


def _grey_to_uint8(arr: np.ndarray, ds, options: ReadOptions) -> tuple[np.ndarray, dict[str, Any]]:
    from pydicom.pixels import apply_modality_lut, apply_voi

    values = apply_modality_lut(arr, ds).astype(np.float64)
    notes: dict[str, Any] = {}
    if options.window is not None:
        center, width = options.window
        out = window_to_uint8(values, center, width)
        notes["window"] = {"center": center, "width": width, "function": "LINEAR", "source": "--window"}
    elif "WindowCenter" in ds and "WindowWidth" in ds and _first(ds.WindowWidth) > 0:
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        fn = str(ds.get("VOILUTFunction") or "LINEAR")
        out = window_to_uint8(values, center, max(width, 1.0) if fn == "LINEAR" else width, function=fn)
        notes["window"] = {"center": center, "width": width, "function": fn, "source": "file WindowCenter/WindowWidth"}
    elif "VOILUTSequence" in ds:
        lut = apply_voi(values, ds, index=0).astype(np.float64)
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        out = np.round(np.clip(lut / (2**bits - 1), 0, 1) * 255).astype(np.uint8)
        notes["window"] = {"source": "file VOI LUT Sequence"}
    else:
        lo, hi = float(values.min()), float(values.max())
        out = np.zeros(values.shape, np.uint8) if hi <= lo else np.round((values - lo) * (255 / (hi - lo))).astype(np.uint8)
        notes["window"] = {"center": (lo + hi) / 2, "width": hi - lo, "source": "frame min..max (no window in the file)"}
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        out = 255 - out
        notes["inverted"] = "MONOCHROME1"
    return out, notes


def read_dicom_plane(path: Path, *, name: str, plane: Plane | None, options: ReadOptions, cap: int) -> tuple[np.ndarray, ImageMeta]:
    """Frame ``plane.index`` (0 when None) as RGB uint8 (H, W, 3), through the modality and VOI LUTs."""
    from pydicom.pixels import pixel_array

    ds = _read_header(path, name)
    if "Rows" not in ds or "Columns" not in ds:
        raise ImageLoadError(f"{name}: a DICOM file without an image (no Rows/Columns; e.g. a report or a structure set)")
    h, w, n = int(ds.Rows), int(ds.Columns), _frames(ds)
    if h * w > cap:
        raise ImageLoadError(f"{name}: {w}x{h} = {w * h:,} pixels per frame is over the cap of {cap:,} (raise it with MASKLAB_MAX_PIXELS)")
    index = 0 if plane is None else plane.index
    if not 0 <= index < n:
        raise ImageLoadError(f"{name}: frame {index} does not exist (the file has {n} frames, 0..{n - 1})")
    _check_decoder(ds, name)
    try:
        arr = pixel_array(path, index=index if n > 1 else None)
    except Exception as e:  # truncated pixel data, bad lengths, decoder failures
        raise ImageLoadError(f"{name}: cannot decode the DICOM pixel data ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if arr.ndim == 3 and arr.shape[-1] == 3:  # RGB (YBR already converted by pydicom)
        rgb = arr if arr.dtype == np.uint8 else np.round(arr.astype(np.float64) * (255.0 / max(1.0, float(arr.max())))).astype(np.uint8)
        notes: dict[str, Any] = {"photometric": str(ds.get("PhotometricInterpretation", ""))}
    elif arr.ndim == 2:
        grey, notes = _grey_to_uint8(arr, ds, options)
        rgb = np.repeat(grey[..., None], 3, axis=2)
    else:
        raise ImageLoadError(f"{name}: unexpected DICOM frame shape {arr.shape}")
    notes["frames"] = n
    return np.ascontiguousarray(rgb), ImageMeta(kind="dicom", pixel_size=dicom_pixel_size(ds), plane=plane, notes=notes)
