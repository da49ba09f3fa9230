"""Expand CLI inputs (files, folders, globs) into a sorted list of image paths with unique output names."""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from masklab.errors import UsageError
from masklab.io.images import IMAGE_SUFFIXES

__all__ = ["InputItem", "expand_inputs"]


@dataclass(frozen=True)
class InputItem:
    """One image to process: its ``path`` and the ``stem`` its outputs are named after (unique in a run)."""

    path: Path
    stem: str


def _scan(folder: Path, recursive: bool) -> list[Path]:
    it = folder.rglob("*") if recursive else folder.iterdir()
    # Directories named like images are listed too: loading them fails with a clear per-file error.
    return sorted(p for p in it if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def expand_inputs(inputs: Iterable[str], *, recursive: bool = False) -> list[InputItem]:
    """Files are taken as given (whatever their suffix), folders scanned for image suffixes, globs expanded.

    Output stems: the file's stem; where two inputs share a stem (``a/cat.jpg``, ``b/cat.jpg``,
    ``cat.png``), each of them gets ``stem-<8 hex of its absolute path>`` so nothing is overwritten
    and the name is the same on every rerun.
    """
    paths: list[Path] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            paths.extend(_scan(p, recursive))
        elif p.exists():
            paths.append(p)
        elif glob.has_magic(raw):
            matches = sorted(Path(m) for m in glob.glob(raw, recursive=recursive))
            if not matches:
                raise UsageError(f"no files match {raw!r}")
            for m in matches:
                paths.extend(_scan(m, recursive) if m.is_dir() else [m])
        else:
            raise UsageError(f"input {raw!r} does not exist")
    seen: set[str] = set()
    unique: list[Path] = []
    for p in paths:
        key = os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    counts: dict[str, int] = {}
    for p in unique:
        counts[p.stem] = counts.get(p.stem, 0) + 1
    items = []
    for p in unique:
        stem = p.stem or "image"
        if counts[p.stem] > 1:
            stem = f"{stem}-{hashlib.sha1(os.path.abspath(p).encode()).hexdigest()[:8]}"
        items.append(InputItem(p, stem))
    return items
