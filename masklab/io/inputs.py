"""Expand CLI inputs (files, folders, globs, ``-`` for stdin, URLs) into a sorted list of items with
unique output names, and fetch URL inputs with size and time limits."""

from __future__ import annotations

import glob
import hashlib
import os
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from masklab.errors import ImageLoadError, UsageError
from masklab.io.images import IMAGE_SUFFIXES
from masklab.io.planes import Plane

__all__ = ["InputItem", "UrlLimits", "expand_inputs", "fetch_url", "is_url"]


@dataclass(frozen=True)
class UrlLimits:
    """Limits for URL inputs: at most ``max_bytes`` downloaded, within ``timeout_s`` seconds in all."""

    max_bytes: int = 50 * 2**20
    timeout_s: float = 30.0


@dataclass(frozen=True)
class InputItem:
    """One image to process: its ``path`` and the ``stem`` its outputs are named after (unique in a run).

    For a URL input ``url`` is set and ``path`` is only the URL's file name (nothing on disk).
    """

    path: Path
    stem: str
    url: str | None = None
    error: str | None = None  # known to fail before loading (a folder under -r that cannot be listed)
    plane: Plane | None = None  # one plane (or window) of a stack file; ``stem`` is then the plane's own

    @property
    def source(self) -> str:
        """What the user gave: the URL or the path, as a string (used in results and error lists). Bytes of
        a file name that are not UTF-8 are shown as ``\\xff`` escapes, so CSV and JSON can always hold it."""
        text = self.url if self.url is not None else str(self.path)
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")

    @property
    def label(self) -> str:
        """``source``, with the plane of a stack (``cells.tif [plane 3]``): one name per row in summaries."""
        if self.plane is None or self.plane.count == 1:
            return self.source
        return f"{self.source} [{'window' if self.plane.window is not None else 'plane'} {self.plane.index}]"


def is_url(text: str) -> bool:
    return "://" in text and urllib.parse.urlsplit(text).scheme.lower() in ("http", "https", "ftp", "file", "data")


def _scan(folder: Path, recursive: bool) -> list[Path]:
    try:
        it = list(folder.rglob("*") if recursive else folder.iterdir())
    except PermissionError as e:
        raise UsageError(f"cannot list the folder {folder}: {e.strerror}; check its permissions") from None
    # Directories named like images are listed too: loading them fails with a clear per-file error.
    return sorted(
        p for p in it if (p.suffix.lower() in IMAGE_SUFFIXES or p.name.lower().endswith(".nii.gz")) and not p.name.startswith(".")
    )


def _unreadable_subfolders(folder: Path) -> list[tuple[Path, str]]:
    """(folder, reason) for each folder under ``folder`` that cannot be listed (``rglob`` skips them
    silently; they become failed items instead)."""
    errors: list[OSError] = []
    for _ in os.walk(folder, onerror=errors.append):
        pass
    return [(Path(e.filename), f"{e.filename}: cannot list this folder ({e.strerror}); its images were not processed")
            for e in errors if e.filename is not None and Path(e.filename) != folder]


def _read_list(stream: IO[str]) -> list[str]:
    """One input per line; blank lines and lines starting with ``#`` are ignored."""
    return [line.strip() for line in stream if line.strip() and not line.lstrip().startswith("#")]


def expand_inputs(
    inputs: Iterable[str],
    *,
    recursive: bool = False,
    allow_urls: bool = False,
    stdin: IO[str] | None = None,
) -> list[InputItem]:
    """Files are taken as given (whatever their suffix), folders scanned for image suffixes, globs expanded.

    ``-`` reads more inputs from ``stdin`` (default ``sys.stdin``), one per line; a listed file that does
    not exist becomes a per-file failure (lists from ``find`` race with deletions) instead of a usage
    error. ``http(s)://`` inputs need ``allow_urls=True``; other URL schemes are refused.

    Output stems: the file's stem; where two inputs share a stem (``a/cat.jpg``, ``b/cat.jpg``,
    ``cat.png``), each of them gets ``stem-<8 hex of its absolute path or URL>`` so nothing is
    overwritten and the name is the same on every rerun.
    """
    entries: list[tuple[Path, str | None]] = []  # (path, url)
    failed: list[InputItem] = []  # folders under -r that cannot be listed
    args = list(inputs)
    if args.count("-") > 1:
        raise UsageError("'-' (read inputs from stdin) may be given only once")
    for raw in args:
        if raw == "-":
            for line in _read_list(stdin if stdin is not None else sys.stdin):
                entries.extend(_expand_one(line, recursive, allow_urls, missing_ok=True))
        else:
            entries.extend(_expand_one(raw, recursive, allow_urls, missing_ok=False))
            if recursive and Path(raw).is_dir():
                failed += [InputItem(d, f"unreadable-{d.name}", error=why) for d, why in _unreadable_subfolders(Path(raw))]
    seen: set[str] = set()
    unique: list[tuple[Path, str | None, str]] = []
    for p, url in entries:
        key = url if url is not None else os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            unique.append((p, url, key))
    counts: dict[str, int] = {}
    for p, _, _ in unique:
        counts[_stem(p)] = counts.get(_stem(p), 0) + 1
    items = []
    for p, url, key in unique:
        stem = _stem(p)
        if counts[_stem(p)] > 1:
            stem = f"{stem}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"
        items.append(InputItem(p, stem, url))
    return items + failed


def _stem(p: Path) -> str:
    """The output stem: the name without its suffix (both of ``.nii.gz``, ``.ome.tif``)."""
    name = p.name
    for double in (".nii.gz", ".ome.tif", ".ome.tiff"):
        if name.lower().endswith(double):
            return name[: -len(double)] or "image"
    return p.stem or "image"


def _expand_one(raw: str, recursive: bool, allow_urls: bool, *, missing_ok: bool) -> list[tuple[Path, str | None]]:
    if is_url(raw):
        scheme = urllib.parse.urlsplit(raw).scheme.lower()
        if scheme not in ("http", "https"):
            raise UsageError(f"only http(s) URLs are accepted, found {scheme}: in {raw!r}")
        if not allow_urls:
            raise UsageError(f"{raw!r} is a URL; pass --allow-urls to download inputs (size and time limits apply)")
        name = Path(urllib.parse.unquote(urllib.parse.urlsplit(raw).path)).name or "download"
        return [(Path(name), raw)]
    p = Path(raw)
    if p.is_dir():
        return [(q, None) for q in _scan(p, recursive)]
    if p.exists():
        return [(p, None)]
    if glob.has_magic(raw):
        matches = sorted(Path(m) for m in glob.glob(raw, recursive=recursive))
        if not matches and not missing_ok:
            raise UsageError(f"no files match {raw!r}")
        out: list[tuple[Path, str | None]] = []
        for m in matches:
            out.extend((q, None) for q in (_scan(m, recursive) if m.is_dir() else [m]))
        return out
    if missing_ok:
        return [(p, None)]  # load_image reports "no such file" for this one item
    raise UsageError(f"input {raw!r} does not exist")


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise ImageLoadError(f"{req.full_url}: redirected to a non-http(s) URL ({newurl})")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def fetch_url(url: str, *, limits: UrlLimits = UrlLimits()) -> bytes:
    """Download ``url`` (http/https only) into memory, refusing bodies over ``limits.max_bytes`` and
    downloads slower than ``limits.timeout_s`` in all. Errors are :class:`ImageLoadError` (per input)."""
    if urllib.parse.urlsplit(url).scheme.lower() not in ("http", "https"):
        raise ImageLoadError(f"{url}: only http(s) URLs are accepted")
    opener = urllib.request.build_opener(_HttpOnlyRedirects())
    deadline = time.monotonic() + limits.timeout_s
    req = urllib.request.Request(url, headers={"User-Agent": "masklab"})
    try:
        with opener.open(req, timeout=limits.timeout_s) as resp:
            declared = resp.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > limits.max_bytes:
                raise ImageLoadError(f"{url}: {int(declared):,} bytes is over the download limit of {limits.max_bytes:,}")
            chunks, total = [], 0
            while True:
                if time.monotonic() > deadline:
                    raise ImageLoadError(f"{url}: download took longer than {limits.timeout_s:g} s")
                chunk = resp.read(64 * 1024)
                if not chunk:
                    break
                total += len(chunk)
                if total > limits.max_bytes:
                    raise ImageLoadError(f"{url}: more than the download limit of {limits.max_bytes:,} bytes")
                chunks.append(chunk)
    except ImageLoadError:
        raise
    except urllib.error.HTTPError as e:
        raise ImageLoadError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise ImageLoadError(f"{url}: download failed ({reason})") from None
    return b"".join(chunks)
