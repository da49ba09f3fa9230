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
    """Save an RGB uint8 (H, W, 3), grey (H, W) or PIL image with Pillow, atomically."""
    from PIL import Image

    img = array if isinstance(array, Image.Image) else Image.fromarray(array)
    fmt = format or {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}.get(Path(path).suffix.lower(), "PNG")
    return atomic_write(path, lambda f: img.save(f, format=fmt, **params))
