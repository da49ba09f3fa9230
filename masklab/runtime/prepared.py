"""Prepared fast paths: a model converted once to OpenVINO, cached, and found again **without torch**.

``backend="auto"`` on a CPU runs a prepared model when one exists (see :mod:`masklab.runtime`). What
identifies one, and so its cache folder ``$MASKLAB_HOME/prepared/<name>-<key>/``:

- the weights' **own bytes** (sha256 of the file: ``--weights``, the cached published file, a trained
  run's weights and card), or ``random(seed=S)`` with torch's version for seeded random weights;
- the options baked into the network (:data:`~masklab.settings.MODEL_OPTIONS`, the model's defaults
  filled in where its card is known without loading it);
- nothing about precision: the one fp32 IR also runs at bf16/fp16 (the runtime's precision hint), and
  ``masklab quantize`` keeps its int8 model beside it (``fp32-int8.xml``, the same key);
- masklab's, torch's, torchvision's and OpenVINO's versions (read from package metadata: no import),
  and :data:`GRAPH_REVISION`, so that a change to the exported graph prepares the model again even
  between releases.

Finding it reads no tensor and imports neither torch nor torchvision, so a prepared run starts in
about the time it takes to import OpenVINO and read the IR. A weights file's digest is remembered in
``prepared/digests.json`` under its path, inode, size, mtime and ctime (ctime cannot be set back by
``touch``/``utime``, so an in-place change is always seen); anything else recomputes it (~0.2 s per
170 MB).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from masklab._version import __version__
from masklab.io.atomic import atomic_write_json
from masklab.models.source import ModelSource, find_source, read_card_file
from masklab.models.weights import cache_dir, sha256_file, weights_path
from masklab.models.zoo import MODELS, get_spec
from masklab.settings import MODEL_OPTIONS, InferenceSettings

__all__ = ["PreparedModel", "prepared_model", "find_prepared", "file_digest", "openvino_installed", "PREPARED_SUFFIX",
           "GRAPH_REVISION"]

PREPARED_SUFFIX = ".xml"  # OpenVINO IR (+ .bin beside it)
#: the kinds of model source masklab converts (matterport's port has its own graph: see runtime/__init__)
_PREPARABLE = ("zoo", "card", "state_dict")
_OWN_GRAPH = "matterport_resnet101"
#: bumped whenever :mod:`masklab.export` writes a different graph (2: the RoI poolers' levels merged by one
#: gather, :mod:`masklab.export.tracing`; NMS stopped at the boxes kept), so that models prepared before
#: are converted again
GRAPH_REVISION = 2


@dataclass(frozen=True)
class PreparedModel:
    """Where the prepared model for some settings lives (``path``: the ``.xml``), whether it is there yet,
    and ``key``: the digest of what identifies it (see the module docstring)."""

    path: Path
    key: str

    @property
    def exists(self) -> bool:
        return self.path.is_file() and self.path.with_suffix(".bin").is_file()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _stat_key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of the file's bytes, remembered while its inode, size, mtime and ctime stay the same."""
    path = Path(path)
    memo_path = cache_dir() / "prepared" / "digests.json"
    key = _stat_key(path)
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    if isinstance(memo, dict) and isinstance(memo.get(key), str):
        return memo[key]
    digest = sha256_file(path)
    if not isinstance(memo, dict) or len(memo) > 256:  # a bounded memo: old entries are cheap to recompute
        memo = {}
    memo[key] = digest
    try:
        atomic_write_json(memo_path, memo)
    except OSError:
        pass  # a read-only cache still works, it just hashes again next time
    return digest


def _identity(src: ModelSource, *, seed: int) -> tuple[str, list, dict] | None:
    """``(name, weights identity, the card's defaults or {})`` for ``src``; None when there is nothing to
    key on (published weights not downloaded yet, or a source masklab does not convert)."""
    if src.kind not in _PREPARABLE:
        return None
    if src.kind == "zoo":
        if src.name not in MODELS:  # a spec built in memory (tests): keyed by its tensors instead
            return None
        spec = get_spec(src.name)
        if spec.arch == _OWN_GRAPH:
            return None
        defaults = spec.card().defaults()
        if src.weights == "random":
            return spec.name, [f"random(seed={seed})", _version("torch")], defaults
        path = Path(src.weights) if src.weights is not None else weights_path(spec.weights) if spec.weights else None
        if path is None or not path.is_file():
            return None
        return spec.name, [file_digest(path)], defaults
    if src.kind == "card":
        card = read_card_file(src.card_path)
        if card.weights is None or not card.weights.file or card.arch == _OWN_GRAPH:
            return None
        weights = src.card_path.parent / card.weights.file
        return card.name, [file_digest(src.card_path), file_digest(weights)], card.defaults()
    return src.path.stem, [file_digest(src.path)], {}  # a bare state dict: its defaults are its arch's


def prepared_model(settings: InferenceSettings, *, seed: int = 0,
                   source: ModelSource | None = None) -> PreparedModel | None:
    """The :class:`PreparedModel` for ``settings`` (existing or not), or None when the model cannot be
    prepared (an exported file, matterport's port, published weights not downloaded). Imports no torch."""
    src = source if source is not None else find_source(settings.model, settings.weights)
    ident = _identity(src, seed=seed)
    if ident is None:
        return None
    name, weights_id, defaults = ident
    baked = {k: getattr(settings, k) if getattr(settings, k) is not None else defaults.get(k) for k in MODEL_OPTIONS}
    versions = [__version__, GRAPH_REVISION] + [_version(d) for d in ("torch", "torchvision", "openvino")]
    key = hashlib.sha256(json.dumps([weights_id, baked, "fp32", versions], sort_keys=True).encode()).hexdigest()
    folder = cache_dir() / "prepared" / f"{name}-{key[:20]}"
    return PreparedModel(path=folder / f"fp32{PREPARED_SUFFIX}", key=key)


def find_prepared(settings: InferenceSettings, *, seed: int = 0,
                  source: ModelSource | None = None) -> Path | None:
    """The prepared model's ``.xml`` for ``settings`` when it is in the cache, else None (no torch)."""
    try:
        p = prepared_model(settings, seed=seed, source=source)
        return p.path if p is not None and p.exists else None
    except OSError:  # an unreadable cache or weights file: run as if nothing were prepared (loading says why)
        return None


def openvino_installed() -> bool:
    """Whether OpenVINO can be imported (asked without importing it)."""
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def note(message: str) -> None:
    """One line on stderr, the way masklab reports a decision it took for the user."""
    print(f"masklab: {message}", file=sys.stderr, flush=True)


def timed_note(message: str, t0: float) -> None:
    note(f"{message} in {time.perf_counter() - t0:.1f} s")
