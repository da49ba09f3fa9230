"""Weights: the cache, verified downloads, and safe loading of state dicts.

- Cache: ``$MASKLAB_HOME`` (default ``~/.cache/masklab``); weights live in ``<cache>/weights/``.
- Downloads stream to a temp file in the same folder, are sha256-checked, then ``os.replace``d into
  place, so an interrupted download never leaves a file that later passes as complete.
- ``MASKLAB_OFFLINE=1`` forbids any download (the error then says where to put the file).
- A cached file is checked against the published hash (torchvision publishes only an 8-hex-digit sha256
  prefix; matterport only a size) once; that first check records the file's *full* sha256 in
  ``FILE.verified`` with its size, mtime, ctime and inode. A later load re-hashes only when one of those
  changed (an in-place edit changes the ctime, which no tool can set back) and then compares the full
  digest; ``masklab models --verify`` (:func:`verify_cache`) re-hashes every cached file.
- Loading never unpickles arbitrary objects: ``torch.load(..., weights_only=True)`` or safetensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from masklab.errors import WeightsMismatchError, WeightsUnavailableError
from masklab.io.atomic import atomic_write_text, temp_file_beside

__all__ = ["WeightsSpec", "cache_dir", "weights_path", "is_cached", "cache_problem", "verify_cache", "ensure_weights",
           "load_state_dict", "check_state_dict", "sha256_file"]

_CHUNK = 1 << 20


@dataclass(frozen=True)
class WeightsSpec:
    """Where pretrained weights come from.

    ``sha256`` is the full hex digest where known; torchvision publishes only the first 8 hex digits
    (in the file name), and a prefix of at least 8 digits is checked as a prefix.
    """

    url: str
    sha256: str
    filename: str
    size_bytes: int | None = None
    license: str = ""


def cache_dir() -> Path:
    """The masklab cache folder: ``$MASKLAB_HOME`` or ``~/.cache/masklab``."""
    return Path(os.environ.get("MASKLAB_HOME") or Path.home() / ".cache" / "masklab")


def weights_path(spec: WeightsSpec) -> Path:
    """Where the cached file for ``spec`` lives (whether or not it exists yet)."""
    return cache_dir() / "weights" / spec.filename


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _hash_ok(digest: str, expected: str) -> bool:
    return digest.lower().startswith(expected.lower()) and len(expected) >= 8


def _integrity_problem(path: Path, spec: WeightsSpec, digest: str | None) -> str | None:
    """Why ``path`` is not ``spec``'s file, or None. Checks the sha256 where the entry publishes one;
    an entry with no published hash (matterport's release) is checked by its exact byte size only."""
    if spec.sha256:
        if not _hash_ok(digest or sha256_file(path), spec.sha256):
            return f"sha256 {(digest or sha256_file(path))[:16]}... does not match {spec.sha256[:16]}..."
        return None
    size = path.stat().st_size
    if spec.size_bytes is None:
        return "the model entry publishes neither a sha256 nor a size, so the file cannot be checked"
    if size != spec.size_bytes:
        return f"size {size} bytes does not match the published {spec.size_bytes}"
    return None


def _verified_marker(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _stamp(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "inode": st.st_ino}


def _read_marker(path: Path, spec: WeightsSpec) -> dict | None:
    """The record of ``path``'s first verification against ``spec``, or None (none, unreadable, an old
    size+mtime text stamp, or made for another published hash)."""
    try:
        doc = json.loads(_verified_marker(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(doc, dict) and doc.get("published") == spec.sha256 and len(str(doc.get("sha256", ""))) == 64
    return doc if ok else None


def _record(path: Path, spec: WeightsSpec, digest: str) -> None:
    atomic_write_text(_verified_marker(path), json.dumps({**_stamp(path), "sha256": digest, "published": spec.sha256}))


def _check_cached(path: Path, spec: WeightsSpec, *, rehash: bool = False) -> str | None:
    """Why the cached ``path`` is not ``spec``'s file, or None. Hashes only when the file changed since
    its recorded verification (or ``rehash``); the first verification records the full digest."""
    marker = _read_marker(path, spec)
    if marker is not None and not rehash and {k: marker.get(k) for k in ("size", "mtime_ns", "ctime_ns", "inode")} == _stamp(path):
        return None
    digest = sha256_file(path)
    if marker is not None:
        if digest != marker["sha256"]:
            return f"sha256 {digest[:16]}... is not the {marker['sha256'][:16]}... recorded when it was first verified"
    else:
        problem = _integrity_problem(path, spec, digest)
        if problem:
            return problem
    _record(path, spec, digest)
    return None


def _verify_cached(path: Path, spec: WeightsSpec) -> None:
    problem = _check_cached(path, spec)
    if problem:
        raise WeightsUnavailableError(
            f"cached weights {path} are corrupt: {problem}\n"
            f"delete the file and run again, or download {spec.url} by hand"
        )


def is_cached(spec: WeightsSpec) -> bool:
    """Whether ``spec``'s file is in the cache and verifies (cheap unless it changed since it last did)."""
    path = weights_path(spec)
    return path.is_file() and _check_cached(path, spec) is None


def cache_problem(spec: WeightsSpec, *, rehash: bool = False) -> str | None:
    """Why ``spec``'s cached file cannot be used (``"not cached"`` when absent), or None when it verifies;
    ``rehash``: hash it even when it looks unchanged."""
    path = weights_path(spec)
    if not path.is_file():
        return "not cached"
    return _check_cached(path, spec, rehash=rehash)


def verify_cache(specs) -> dict[str, str | None]:
    """Re-hash every cached file of ``specs`` (WeightsSpecs): ``{filename: problem or None}``; files not
    in the cache are left out."""
    return {s.filename: cache_problem(s, rehash=True) for s in specs if weights_path(s).is_file()}


def _unavailable(spec: WeightsSpec, target: Path, reason: str) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"model weights {spec.filename} are not cached and could not be downloaded ({reason}).\n"
        f"  URL:    {spec.url}\n"
        f"  sha256: {spec.sha256 or f'not published; checked by size ({spec.size_bytes} bytes)'}\n"
        f"Download it on a machine with network and copy it to {target}, or pass --weights PATH.\n"
        "To try masklab offline, use the demo model shipped with it: --model shapes_demo "
        "(squares, circles, triangles; `masklab data shapes` makes images for it)."
    )


def ensure_weights(spec: WeightsSpec, *, progress: bool = True, timeout: float = 30.0) -> Path:
    """The verified local path of ``spec``'s file, downloading it into the cache if needed."""
    target = weights_path(spec)
    if target.is_file():
        _verify_cached(target, spec)
        return target
    if os.environ.get("MASKLAB_OFFLINE", "").strip() not in ("", "0"):
        raise _unavailable(spec, target, "MASKLAB_OFFLINE is set")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        _download(spec, target, progress=progress, timeout=timeout)
    except WeightsUnavailableError:
        raise
    except (OSError, ValueError) as e:  # URLError, HTTPError, timeouts, DNS failures are OSErrors
        raise _unavailable(spec, target, f"{type(e).__name__}: {e}".splitlines()[0][:120]) from None
    return target


def _download(spec: WeightsSpec, target: Path, *, progress: bool, timeout: float) -> None:
    import urllib.request

    from tqdm.auto import tqdm

    fd, tmp = temp_file_beside(target, suffix=".part")
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(spec.url, timeout=timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or spec.size_bytes
            with tqdm(total=total, unit="B", unit_scale=True, desc=spec.filename, disable=not progress) as bar:
                for chunk in iter(lambda: resp.read(_CHUNK), b""):
                    out.write(chunk)
                    h.update(chunk)
                    bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        problem = _integrity_problem(Path(tmp), spec, h.hexdigest())
        if problem:
            raise WeightsUnavailableError(f"downloaded {spec.url} but its {problem}; nothing was saved")
        os.replace(tmp, target)
        _record(target, spec, h.hexdigest())
    finally:
        Path(tmp).unlink(missing_ok=True)


def load_state_dict(path: str | os.PathLike) -> dict:
    """Read a state dict from ``.safetensors`` or a torch file (``weights_only=True``: no code runs).

    A training checkpoint holding ``{"model": state_dict, ...}`` is accepted too. A file that is not
    weights gets masklab's own message (PyTorch's would advise ``weights_only=False``, which runs code).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file {path} does not exist")
    if not os.access(path, os.R_OK):
        raise WeightsUnavailableError(f"weights file {path} cannot be read (permission denied)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # SafetensorError: a torn header or data, or not safetensors at all
            raise _damaged(path, e) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, zip errors, refused globals
        raise WeightsMismatchError(_not_weights(path, e)) from None
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
        raise WeightsMismatchError(f"{path} does not hold a state dict (found {type(obj).__name__})")
    return dict(obj)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:160]


def _not_weights(path: Path, e: BaseException) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, in masklab's words (never PyTorch's advice to
    load with ``weights_only=False``: that runs whatever code the file holds)."""
    text = str(e)
    expected = ("expected a state dict saved with torch.save(model.state_dict(), PATH), a masklab training "
                "checkpoint, or a .safetensors file")
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found or "Unsupported global" in text:
        what = f" (e.g. {found.group(1)}; a whole pickled model?)" if found else ""
        return (f"{path} holds pickled Python objects besides tensors{what}; masklab reads .pth/.pt files with "
                f"torch.load(weights_only=True) and never runs code from a weights file: {expected}")
    return (f"{path} is not a PyTorch weights file (read with weights_only=True: {type(e).__name__}: {_first_line(e)}); "
            f"the file ({path.stat().st_size} bytes) is damaged (truncated?) or is not weights: {expected}")


def _damaged(path: Path, e: Exception) -> WeightsMismatchError:
    return WeightsMismatchError(
        f"{path} is not a readable .safetensors weights file ({_first_line(e)})\n"
        f"  the file ({path.stat().st_size} bytes) is damaged (truncated?) or is not safetensors: copy or download it again"
    )


def check_state_dict(module, state: Mapping, *, source: str = "weights", max_listed: int = 5) -> None:
    """Raise :class:`WeightsMismatchError` naming the first mismatched keys/shapes if ``state`` does not fit."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(getattr(state[k], "shape", ())) != tuple(v.shape)
    ]
    if not (missing or unexpected or shapes):
        return
    lines = [f"{source} do not fit the architecture {type(module).__name__}:"]
    for title, items in (("wrong shape", shapes), ("missing", missing), ("unexpected", unexpected)):
        if items:
            more = f" (+{len(items) - max_listed} more)" if len(items) > max_listed else ""
            lines.append(f"  {title} ({len(items)}): " + "; ".join(items[:max_listed]) + more)
    raise WeightsMismatchError("\n".join(lines))
