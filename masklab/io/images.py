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
- **Multi-frame** files (animated GIF/WebP, multi-page TIFF) give their first frame.
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

__all__ = [
    "LoadedImage",
    "load_image",
    "sniff_format",
    "IMAGE_SUFFIXES",
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "max_pixels",
]

#: File suffixes treated as images when a folder is scanned (the content decides what is accepted).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
#: Formats that may be decoded, detected from the content.
ALLOWED_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP")
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
_SNIFF_BYTES = 16


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


def sniff_format(head: bytes) -> tuple[str, ...] | None:
    """The Pillow format name(s) the first bytes of a file announce, or None if not on the allowlist."""
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ("WEBP",)
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


def _scale_to_uint8(a: np.ndarray, *, sixteen_bit: bool) -> np.ndarray:
    """Map one high-depth channel to uint8 without clipping (see the module docstring for the rule)."""
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


def _open_bytes(data: bytes | None, path: Path | None, name: str, cap: int) -> LoadedImage:
    from PIL import Image, UnidentifiedImageError

    if data is not None:
        head = data[:_SNIFF_BYTES]
    else:
        try:
            with open(path, "rb") as f:  # type: ignore[arg-type]
                head = f.read(_SNIFF_BYTES)
        except OSError as e:
            raise ImageLoadError(f"{name}: cannot read ({e.strerror or e})") from None
    formats = sniff_format(head)
    if formats is None:
        raise ImageLoadError(
            f"{name}: not an allowed image format (found {_describe_head(head)}; expected {', '.join(ALLOWED_FORMATS)})"
        )
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
    return LoadedImage(arr, name, path)


def load_image(source: Any, *, name: str | None = None, max_pixels: int | None = None) -> LoadedImage:
    """Load a path, bytes, ``PIL.Image``, numpy array (H, W, 3) uint8 RGB, or a :class:`LoadedImage`.

    Args:
        source: what to load.
        name: the display name used in error messages and results (default: the path).
        max_pixels: refuse files whose header declares more pixels (default: ``$MASKLAB_MAX_PIXELS``
            or 100 MP). Applies to paths and bytes; arrays and PIL images are already decoded.

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
        return _open_bytes(None, path, label, cap)
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
