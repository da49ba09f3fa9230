"""The one image loader used by the CLI, the Python API and the server.

Everything becomes RGB uint8 (H, W, 3), EXIF-upright (orientations 1-8 applied). The rules:

- **Allowlist by content**: the first bytes must be JPEG, PNG, GIF, BMP, TIFF or WebP. Only then is the
  file handed to Pillow, and Pillow is told to try that one format only, so no decoder outside the
  allowlist (EPS, PSD, ICO, ...) ever runs, whatever the file is named.
- **Pixel cap**: the size declared in the header is checked before any pixel is decoded; over the cap
  (``max_pixels=`` argument, else ``$MASKLAB_MAX_PIXELS``, else 100 MP) the file is refused without
  allocating its pixels. Pillow's own process-wide bomb limit (``Image.MAX_IMAGE_PIXELS``, ~179 MP
  refused outright) is left as the user set it and still applies on top.
- **Modes**: grayscale and palette become RGB; transparency (RGBA, LA, palette with a transparent
  index) is composited on neutral grey (128, 128, 128); CMYK goes through its embedded ICC profile
  when it has one (else Pillow's conversion); 16-bit integer data are scaled by the 16-bit range
  (``v * 255 / 65535``, as Pillow does for 16-bit RGB); float data in [0, 1] are scaled by 255, other
  float ranges are stretched min..max to 0..255. Nothing is clipped.
- **Multi-frame** files (animated GIF/WebP; multi-page TIFF when tifffile is not installed) give their
  first frame.
- **Scientific files** (needs ``pip install 'masklab[formats]'``): stacks and OME-TIFF (tifffile),
  DICOM (pydicom, magic ``DICM`` at byte 128), NIfTI (nibabel, ``.nii`` header or gzipped) and GeoTIFF
  (rasterio) are chosen by content too and read by their modules (:mod:`masklab.io.tiff_stack`,
  :mod:`masklab.io.dicom`, :mod:`masklab.io.nifti`, :mod:`masklab.io.geotiff`); ``plane=`` picks one
  plane of a stack (default plane 0), ``options=`` the channels and intensity window, and the result's
  ``meta`` carries the pixel size. Plain single-image TIFFs keep Pillow's reader (plus their pixel size).
- **Broken files** (empty, truncated, bad checksum, garbage) raise :class:`~masklab.errors.ImageLoadError`
  with a one-line reason. Process-wide Pillow settings (``ImageFile.LOAD_TRUNCATED_IMAGES``,
  ``Image.MAX_IMAGE_PIXELS``) are never changed.
"""

from __future__ import annotations

import io
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from masklab.errors import ImageLoadError, UsageError
from masklab.io.planes import ImageMeta, Plane, ReadOptions, StackInfo
from masklab.io.planes import scale_to_uint8 as _scale_to_uint8

__all__ = [
    "LoadedImage",
    "load_image",
    "sniff_format",
    "IMAGE_SUFFIXES",
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "max_pixels",
    "probe_stack",
]

#: File suffixes treated as images when a folder is scanned (the content decides what is accepted).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".dcm", ".nii")
#: (``.nii.gz`` files are scanned too: :func:`masklab.io.inputs.expand_inputs` looks at both suffixes.)
#: Formats that may be decoded, detected from the content.
ALLOWED_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP", "DICOM", "NIFTI")
DEFAULT_MAX_PIXELS = 100_000_000
_NEUTRAL_GREY = (128, 128, 128)

# Magic numbers -> Pillow format name(s). Phones' multi-picture JPEGs (MPO) open through the JPEG
# opener too (Pillow returns an MPO image from it), first frame = the main picture.
_MAGIC: tuple[tuple[bytes, tuple[str, ...]], ...] = (
    (b"\xff\xd8\xff", ("JPEG",)),
    (b"\x89PNG\r\n\x1a\n", ("PNG",)),
    (b"GIF87a", ("GIF",)),
    (b"GIF89a", ("GIF",)),
    (b"BM", ("BMP",)),
    (b"II*\x00", ("TIFF",)),
    (b"MM\x00*", ("TIFF",)),
)
_SNIFF_BYTES = 4096  # DICOM's magic is at byte 128, NIfTI-1's at 344 (of the gunzipped bytes for .nii.gz)


def max_pixels() -> int:
    """The pixel cap in force: ``$MASKLAB_MAX_PIXELS`` or 100 megapixels."""
    v = os.environ.get("MASKLAB_MAX_PIXELS")
    if not v:
        return DEFAULT_MAX_PIXELS
    try:
        cap = int(v)
    except ValueError:
        raise UsageError(f"MASKLAB_MAX_PIXELS must be a positive integer, found {v!r}") from None
    if cap <= 0:
        raise UsageError(f"MASKLAB_MAX_PIXELS must be a positive integer, found {v!r}")
    return cap


def _is_nifti(head: bytes) -> bool:
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return struct.unpack("<i", head[:4])[0] == 348 or struct.unpack(">i", head[:4])[0] == 348
    return len(head) >= 8 and head[4:8] in (b"n+2\x00",) and struct.unpack("<i", head[:4])[0] in (540,)


def sniff_format(head: bytes) -> tuple[str, ...] | None:
    """The format name(s) the first bytes of a file announce (Pillow's names, plus ``DICOM`` and ``NIFTI``
    when the head is long enough: 132 and 348 bytes), or None if not on the allowlist. A gzip head is
    looked into for a NIfTI header."""
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ("WEBP",)
    if len(head) >= 132 and head[128:132] == b"DICM":
        return ("DICOM",)
    if _is_nifti(head):
        return ("NIFTI",)
    if head[:2] == b"\x1f\x8b":
        import gzip
        import zlib

        try:
            inner = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, 348)
        except (zlib.error, gzip.BadGzipFile):
            inner = b""
        return ("NIFTI",) if _is_nifti(inner) else None
    for magic, fmts in _MAGIC:
        if head.startswith(magic):
            return fmts
    return None


def _describe_head(head: bytes) -> str:
    """A short guess at what a refused file is, for the error message."""
    known = {
        b"%!PS": "PostScript/EPS",
        b"\xc5\xd0\xd3\xc6": "EPS (DOS binary)",
        b"8BPS": "Photoshop PSD",
        b"\x00\x00\x01\x00": "ICO",
        b"%PDF": "PDF",
        b"PK\x03\x04": "ZIP",
        b"\x00\x00\x00\x0cjP": "JPEG 2000",
        b"<svg": "SVG",
        b"<?xm": "XML/SVG",
    }
    for magic, what in known.items():
        if head.startswith(magic):
            return what
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return "ISO media (HEIC/AVIF/MP4)"
    if not head:
        return "an empty file"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "text"
    return f"unknown bytes {head[:8].hex(' ')}"


@dataclass(frozen=True)
class LoadedImage:
    """``array``: uint8 (H, W, 3) RGB, EXIF-upright. ``name``: display name; ``path``: source or None."""

    array: np.ndarray
    name: str
    path: Path | None = None
    meta: ImageMeta | None = None  # pixel size, plane of a stack (scientific readers and TIFF resolution tags)

    @property
    def size_hw(self) -> tuple[int, int]:
        return int(self.array.shape[0]), int(self.array.shape[1])


def _from_array(arr: np.ndarray, name: str) -> LoadedImage:
    a = np.asarray(arr)
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ImageLoadError(f"{name}: expected an (H, W, 3) RGB array, found shape {a.shape}")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    if a.shape[2] == 4:
        a = a[..., :3]
    if a.dtype != np.uint8:
        raise ImageLoadError(f"{name}: expected a uint8 array (values 0-255), found dtype {a.dtype}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ImageLoadError(f"{name}: empty image of shape {a.shape}")
    return LoadedImage(np.ascontiguousarray(a), name)


def _cmyk_to_rgb(img):
    """CMYK -> RGB through the embedded ICC profile when there is one (the colours the file means)."""
    icc = img.info.get("icc_profile")
    if icc:
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except Exception:  # a broken or unsupported profile: fall back to Pillow's conversion
            pass
    return img.convert("RGB")


def _pil_to_rgb(img) -> np.ndarray:
    from PIL import Image, ImageOps

    try:
        # a copy only when the EXIF orientation asks for a turn (a 144 MP image is 576 MB in Pillow)
        if img.getexif().get(0x0112, 1) != 1:
            img = ImageOps.exif_transpose(img)
    except Exception:  # malformed EXIF block: keep the pixels as stored rather than refuse the image
        pass
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = _scale_to_uint8(np.asarray(img), sixteen_bit=mode != "F")
        return np.stack([a] * 3, axis=-1)
    if mode == "CMYK":
        img = _cmyk_to_rgb(img)
    elif mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (*_NEUTRAL_GREY, 255))
        img = Image.alpha_composite(bg, rgba)
    elif mode == "L" and "transparency" in img.info:
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (*_NEUTRAL_GREY, 255))
        img = Image.alpha_composite(bg, img)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return _rgb_pixels(img)


def _rgb_pixels(img) -> np.ndarray:
    """uint8 (H, W, 3), a writable copy (torch.from_numpy warns on read-only) of an RGB Pillow image.

    Large images are copied in strips of rows: ``np.array(img)`` goes through ``img.tobytes()``, a
    second full copy (432 MB more for 144 MP)."""
    w, h = img.size
    if w * h <= 1 << 24:
        return np.array(img, dtype=np.uint8)
    out = np.empty((h, w, 3), np.uint8)
    step = max(1, (1 << 22) // w)
    for y in range(0, h, step):
        out[y : y + step] = np.asarray(img.crop((0, y, w, min(y + step, h))))
    return out


def _head(data: bytes | None, path: Path | None, name: str) -> bytes:
    if data is not None:
        return data[:_SNIFF_BYTES]
    try:
        with open(path, "rb") as f:  # type: ignore[arg-type]
            return f.read(_SNIFF_BYTES)
    except OSError as e:
        raise ImageLoadError(f"{name}: cannot read ({e.strerror or e})") from None


def _formats(head: bytes, name: str) -> tuple[str, ...]:
    formats = sniff_format(head)
    if formats is None:
        raise ImageLoadError(
            f"{name}: not an allowed image format (found {_describe_head(head)}; expected {', '.join(ALLOWED_FORMATS)})"
        )
    return formats


def _scientific_kind(formats: tuple[str, ...], head: bytes, path: Path | None) -> str | None:
    """``"dicom"``, ``"nifti"``, ``"geotiff"``, ``"tiff"`` (a stack for tifffile) or None (Pillow reads it)."""
    if formats[0] in ("DICOM", "NIFTI"):
        return formats[0].lower()
    if formats[0] != "TIFF" or path is None:
        return None
    from masklab.io.tiff_stack import tiff_route

    return tiff_route(path)


def _read_scientific(kind: str, path: Path | None, name: str, cap: int, options: ReadOptions | None, plane: Plane | None) -> LoadedImage:
    if path is None:
        raise ImageLoadError(f"{name}: {kind.upper()} is read from a file path, not from bytes")
    from masklab.errors import MissingDependencyError
    from masklab.io import dicom, geotiff, nifti, tiff_stack

    read = {"dicom": dicom.read_dicom_plane, "nifti": nifti.read_nifti_plane, "geotiff": geotiff.read_geotiff_window,
            "tiff": tiff_stack.read_tiff_plane}[kind]
    try:
        arr, meta = read(path, name=name, plane=plane, options=options or ReadOptions(), cap=cap)
    except MissingDependencyError as e:
        raise ImageLoadError(f"{name}: {kind.upper()} needs an optional package: {e}") from None
    except MemoryError:
        raise ImageLoadError(f"{name}: out of memory while decoding") from None
    return LoadedImage(arr, name, path, meta)


def probe_stack(path: str | os.PathLike, *, options: ReadOptions | None = None, max_pixels: int | None = None) -> StackInfo | None:
    """What a stack file holds (planes, plane size, pixel size) from its header, or None for an image that
    is not a stack (JPEG, PNG, a plain TIFF, ...). Raises :class:`ImageLoadError` for unreadable files."""
    path = Path(path)
    name = str(path)
    cap = _resolve_cap(max_pixels)
    head = _head(None, path, name)
    formats = sniff_format(head)
    if formats is None:
        return None
    kind = _scientific_kind(formats, head, path)
    if kind is None:
        return None
    from masklab.errors import MissingDependencyError
    from masklab.io import dicom, geotiff, nifti, tiff_stack

    opts = options or ReadOptions()
    try:
        if kind == "geotiff":
            return geotiff.probe_geotiff(path, name=name, options=opts, cap=cap)
        probe = {"dicom": dicom.probe_dicom, "nifti": nifti.probe_nifti, "tiff": tiff_stack.probe_tiff}[kind]
        return probe(path, name=name, options=opts)
    except MissingDependencyError as e:
        raise ImageLoadError(f"{name}: {kind.upper()} needs an optional package: {e}") from None


def _open_bytes(data: bytes | None, path: Path | None, name: str, cap: int, options: ReadOptions | None = None,
                plane: Plane | None = None) -> LoadedImage:
    from PIL import Image, UnidentifiedImageError

    head = _head(data, path, name)
    formats = _formats(head, name)
    kind = _scientific_kind(formats, head, path)
    if kind is not None:
        return _read_scientific(kind, path, name, cap, options, plane)
    if formats[0] in ("DICOM", "NIFTI"):
        raise ImageLoadError(f"{name}: {formats[0]} is read from a file path, not from bytes")
    src: Any = io.BytesIO(data) if data is not None else path
    try:
        # formats= limits Pillow to the decoder the magic bytes named: nothing else gets to parse the file.
        with Image.open(src, formats=formats) as img:
            w, h = img.size  # from the header; no pixel decoded yet
            if w <= 0 or h <= 0:
                raise ImageLoadError(f"{name}: the header declares an empty image ({w}x{h})")
            if w * h > cap:
                raise ImageLoadError(
                    f"{name}: {w}x{h} = {w * h:,} pixels is over the cap of {cap:,} (raise it with MASKLAB_MAX_PIXELS)"
                )
            img.seek(0)  # first frame of multi-frame files
            img.load()
            arr = _pil_to_rgb(img)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(f"{name}: corrupt {formats[0]} (its header could not be parsed)") from None
    except Image.DecompressionBombError as e:
        # Pillow's own limit fired while reading the header (nothing decoded): same meaning as our cap.
        declared = re.search(r"\((\d+) pixels\)", str(e))
        size = f"declares {int(declared.group(1)):,} pixels" if declared else "declares too many pixels"
        raise ImageLoadError(
            f"{name}: refused as a decompression bomb: {size}, over the pixel cap (Pillow's own limit)"
        ) from None
    except MemoryError:
        raise ImageLoadError(f"{name}: out of memory while decoding") from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, KeyError, struct.error) as e:
        # Pillow's decoders report malformed data with any of these; all mean "this file is broken".
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageLoadError(f"{name}: corrupt or truncated {formats[0]} ({reason})") from None
    meta = None
    if formats[0] == "TIFF" and path is not None:
        from masklab.io.tiff_stack import plain_tiff_meta

        meta = plain_tiff_meta(path)
    return LoadedImage(arr, name, path, meta)


def load_image(source: Any, *, name: str | None = None, max_pixels: int | None = None,
               options: ReadOptions | None = None, plane: Plane | None = None) -> LoadedImage:
    """Load a path, bytes, ``PIL.Image``, numpy array (H, W, 3) uint8 RGB, or a :class:`LoadedImage`.

    Args:
        source: what to load.
        name: the display name used in error messages and results (default: the path).
        max_pixels: refuse files whose header declares more pixels (default: ``$MASKLAB_MAX_PIXELS``
            or 100 MP). Applies to paths and bytes; arrays and PIL images are already decoded.
        options: channels and intensity window for stacks, DICOM, NIfTI and GeoTIFF (:class:`ReadOptions`).
        plane: which plane (or window) of a stack file (:func:`masklab.io.stacks.expand_planes` makes
            them); default plane 0.

    Returns: a :class:`LoadedImage` with ``array`` RGB uint8 (H, W, 3), EXIF orientation applied.
    Raises: :class:`~masklab.errors.ImageLoadError` with a one-line reason.
    """
    if isinstance(source, LoadedImage):
        return source
    if isinstance(source, np.ndarray):
        return _from_array(source, name or "<array>")
    cap = _resolve_cap(max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _open_bytes(bytes(source), None, name or "<bytes>", cap)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        label = name or str(path)
        if not path.exists():
            raise ImageLoadError(f"{label}: no such file")
        if not path.is_file():
            raise ImageLoadError(f"{label}: not a regular file ({'a directory' if path.is_dir() else 'special file'})")
        return _open_bytes(None, path, label, cap, options, plane)
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        Image = None
    if Image is not None and isinstance(source, Image.Image):
        return LoadedImage(_pil_to_rgb(source), name or "<PIL.Image>")
    raise ImageLoadError(
        f"cannot load an image from {type(source).__name__}: expected a path, bytes, PIL image or numpy array"
    )


def _resolve_cap(cap: int | None) -> int:
    if cap is None:
        return max_pixels()
    if not isinstance(cap, int) or cap <= 0:
        raise UsageError(f"max_pixels must be a positive integer, found {cap!r}")
    return cap
