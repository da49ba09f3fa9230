"""The one image loader used by the CLI, the Python API and the server.

Everything becomes RGB uint8 (H, W, 3) with EXIF orientation applied. Refused with
:class:`~masklab.errors.ImageLoadError`: formats outside the allowlist (checked on the file's content,
not its name), images over the pixel cap (``MASKLAB_MAX_PIXELS``, default 100 MP), corrupt files.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from masklab.errors import ImageLoadError

__all__ = ["LoadedImage", "load_image", "IMAGE_SUFFIXES", "DEFAULT_MAX_PIXELS", "max_pixels"]

#: File suffixes treated as images when a folder is scanned (the content decides what is accepted).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
#: Formats Pillow may decode (by detected content).
ALLOWED_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP")
DEFAULT_MAX_PIXELS = 100_000_000


def max_pixels() -> int:
    """The pixel cap in force: ``$MASKLAB_MAX_PIXELS`` or 100 megapixels."""
    v = os.environ.get("MASKLAB_MAX_PIXELS")
    return int(v) if v else DEFAULT_MAX_PIXELS


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


def _pil_to_rgb(img) -> np.ndarray:
    from PIL import Image, ImageOps

    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = np.zeros_like(a) if hi <= lo else (a - lo) / (hi - lo) * 255.0
        a = np.clip(np.round(a), 0, 255).astype(np.uint8)
        return np.stack([a] * 3, axis=-1)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (128, 128, 128, 255))  # neutral grey under transparency
        img = Image.alpha_composite(bg, rgba)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _open_bytes(data: bytes | None, path: Path | None, name: str) -> LoadedImage:
    from PIL import Image, UnidentifiedImageError

    cap = max_pixels()
    src: Any = io.BytesIO(data) if data is not None else path
    try:
        with Image.open(src, formats=ALLOWED_FORMATS) as img:
            w, h = img.size
            if w * h > cap:
                raise ImageLoadError(f"{name}: {w}x{h} = {w * h} pixels is over the cap of {cap} (MASKLAB_MAX_PIXELS)")
            img.load()
            arr = _pil_to_rgb(img)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(f"{name}: not an image in an allowed format ({', '.join(ALLOWED_FORMATS)})") from None
    except Image.DecompressionBombError as e:
        raise ImageLoadError(f"{name}: refused as a decompression bomb ({e})") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageLoadError(f"{name}: corrupt or truncated image ({e})") from None
    return LoadedImage(arr, name, path)


def load_image(source: Any, *, name: str | None = None) -> LoadedImage:
    """Load a path, bytes, ``PIL.Image``, numpy array (H, W, 3) uint8 RGB, or a :class:`LoadedImage`."""
    if isinstance(source, LoadedImage):
        return source
    if isinstance(source, np.ndarray):
        return _from_array(source, name or "<array>")
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _open_bytes(bytes(source), None, name or "<bytes>")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise ImageLoadError(f"{path}: no such file")
        if not path.is_file():
            raise ImageLoadError(f"{path}: not a regular file")
        return _open_bytes(None, path, name or str(path))
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        Image = None
    if Image is not None and isinstance(source, Image.Image):
        return LoadedImage(_pil_to_rgb(source), name or "<PIL.Image>")
    raise ImageLoadError(f"cannot load an image from {type(source).__name__}: expected a path, bytes, PIL image or numpy array")
