"""Atomic file writes: write a temp file in the target folder, fsync, then ``os.replace``.

A reader (or a resumed run) therefore sees either the old file or the complete new one, never half.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_save_image",
    "temp_file_beside",
]


def _umask() -> int:
    # os.umask can only be read by setting it; done once at import, before any worker threads exist.
    old = os.umask(0o022)
    os.umask(old)
    return old


_FILE_MODE = 0o666 & ~_umask()


def temp_file_beside(path: Path, *, suffix: str = ".tmp") -> tuple[int, str]:
    """A new temp file in ``path``'s folder (fd, name), with the permissions a plain ``open`` would give
    (mkstemp alone makes 0600 files that other users and web servers could not read)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.fchmod(fd, _FILE_MODE)
    return fd, tmp


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], *, mode: str = "wb") -> Path:
    """Call ``write(file_object)`` on a temp file next to ``path``, then move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file_beside(path)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text), mode="w")


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = None) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def atomic_save_image(path: str | os.PathLike, array, *, format: str | None = None, **params) -> Path:
    """Save an RGB uint8 (H, W, 3), grey (H, W) or PIL image, atomically.

    A uint8 RGB or grey array saved as PNG with no extra ``params`` (every overlay a run writes) goes
    through OpenCV's encoder with zlib level 1, the run-length strategy and the "up" row filter only: the
    same pixels in a standard 8-bit PNG, ~4x faster than Pillow's default (6-8 against 31 ms for a 480 x 640
    overlay on a 2-core Intel Xeon with AMX; libpng's adaptive filter choice, tried before, took 11-13 ms)
    and about as large (632 against 649 KB on a noisy scene; 382 against 367 KB on a photograph, the
    adaptive choice's size). Everything else goes through Pillow.
    """
    fmt = format or {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}.get(Path(path).suffix.lower(), "PNG")
    if fmt == "PNG" and not params:
        data = _fast_png(array)
        if data is not None:
            return atomic_write_bytes(path, data)
    from PIL import Image

    img = array if isinstance(array, Image.Image) else Image.fromarray(array)
    return atomic_write(path, lambda f: img.save(f, format=fmt, **params))


def _fast_png(array) -> bytes | None:
    """PNG bytes of a uint8 (H, W, 3) RGB or (H, W) grey numpy array with OpenCV; None for anything else."""
    import numpy as np

    if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.size == 0:
        return None
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        return None
    import cv2

    pixels = array if array.ndim == 2 else array[:, :, ::-1]  # OpenCV takes BGR
    params = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
    if hasattr(cv2, "IMWRITE_PNG_FILTER"):  # OpenCV >= 4.10; older ones keep libpng's adaptive choice
        params += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
    ok, buf = cv2.imencode(".png", pixels, params)
    return buf.tobytes() if ok else None
