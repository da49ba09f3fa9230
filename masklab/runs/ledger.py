"""The run ledger: what every engine (local folder, Ray) records about a run in its output folder.

- ``run.json``: written at the start (``"complete": false``, the settings and their fingerprint, the
  number of images) and again at the end (``"complete": true`` with the model card, versions, counts,
  every failure with its one-line reason, and timings), so a killed run still tells the rerun which
  settings its outputs came from.
- ``summary.csv``: one row per input (image, status ok / skipped / failed, instances, one column per
  class, error). The class columns are every class of the model, or the ``classes`` the run keeps, in
  the model's order, found or not, so runs of one model merge column by column.
- The resume decision: with ``skip_existing=None`` a run skips the images an earlier run finished when
  the folder's ``run.json`` has the same settings fingerprint; any change of a setting that decides the
  outputs starts over.

The ledger writes through a *folder*: :class:`LocalFolder` here, or the Ray engine's
:class:`~masklab.runs.ray.storage.Store` (a local folder or a ``pyarrow.fs`` URI); both offer
``read_text(name)`` and ``write_bytes(name, data)`` with atomic whole-file writes.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from masklab.errors import ImageLoadError, MasklabError, UsageError
from masklab.io.atomic import atomic_write_bytes
from masklab.io.formats.common import NOT_CLASSES
from masklab.io.inputs import InputItem
from masklab.settings import RUNTIME_ONLY
from masklab.structures.instances import Instances

__all__ = [
    "FolderBusyError",
    "check_writable",
    "UnwrittenError",
    "folder_lock",
    "unwritten_error",
    "ImageResult",
    "RunSummary",
    "RunLedger",
    "RunFolder",
    "LocalFolder",
    "OUTPUT_OPTIONS",
    "SPEED_ONLY",
    "run_settings",
    "settings_fingerprint",
    "read_run_json",
    "summary_csv",
    "summary_classes",
    "one_line",
    "versions",
]

#: Run options that change how fast a run goes, not what it writes: left out of the fingerprint, with
#: :data:`masklab.settings.RUNTIME_ONLY` (device, threads).
SPEED_ONLY = ("batch_size", "workers", "skip_existing", "progress", "engine")
#: The :class:`~masklab.io.formats.writer.OutputWriter` options a run records in its settings block.
OUTPUT_OPTIONS = ("viz", "formats", "px_per_unit", "unit", "polygon_tolerance", "overlay_max_side")


@dataclass
class ImageResult:
    """What happened to one input.

    ``error`` is None on success (then ``counts`` holds instances per label and ``n_instances`` their
    total), else a one-line reason. ``skipped``: done by an earlier run and not redone. ``instances``
    is kept only when the run was asked to (``keep_instances=True``). ``seconds``: wall time from the
    start of decoding to the last file written.
    """

    item: InputItem
    instances: Instances | None = None
    error: str | None = None
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    n_instances: int = 0
    skipped: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class RunSummary:
    """A finished run: one :class:`ImageResult` per input, in input order; ``seconds`` of wall time."""

    results: list[ImageResult] = field(default_factory=list)
    seconds: float = 0.0
    fingerprint: str = ""
    resumed: bool = False

    @property
    def failures(self) -> list[ImageResult]:
        return [r for r in self.results if r.error is not None]

    @property
    def disk_full(self) -> int:
        """How many images failed because the disk (or quota) was full while writing their outputs."""
        marks = (f"[Errno {errno.ENOSPC}]", f"[Errno {errno.EDQUOT}]")
        return sum(any(m in r.error for m in marks) for r in self.failures)  # type: ignore[operator]

    @property
    def skipped(self) -> int:
        return sum(r.skipped for r in self.results)

    @property
    def processed(self) -> int:
        """Images segmented by this run (not failed, not skipped)."""
        return sum(r.ok and not r.skipped for r in self.results)

    @property
    def images_per_s(self) -> float | None:
        return self.processed / self.seconds if self.seconds > 0 else None

    @property
    def exit_code(self) -> int:
        """0 when every input succeeded, 1 when some failed."""
        return 1 if self.failures else 0


def one_line(e: BaseException | str) -> str:
    """The first line of an error message (what summary.csv and run.json record)."""
    text = str(e).strip()
    first = text.splitlines()[0] if text else ""
    if isinstance(e, BaseException) and not isinstance(e, ImageLoadError):
        first = f"{type(e).__name__}: {first}" if first else type(e).__name__
    return first


def versions() -> dict[str, str | None]:
    """The versions a run records: masklab, Python, torch, torchvision, OpenVINO, numpy and the platform,
    read from the installed packages' metadata (a run on a prepared model never imports torch)."""
    from importlib import metadata

    import numpy

    from masklab import __version__

    def dist(name: str) -> str | None:
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "__version__"):  # loaded: its own word (torch's has +cu130)
            return str(module.__version__)
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {
        "masklab": __version__,
        "python": sys.version.split()[0],
        "torch": dist("torch"),
        "torchvision": dist("torchvision"),
        "openvino": dist("openvino"),
        "numpy": numpy.__version__,
        "platform": platform.platform(),
    }


def run_settings(model: Mapping[str, Any], output: Mapping[str, Any]) -> dict[str, Any]:
    """``run.json``'s settings block: the model's settings (``Segmenter.settings()``, or
    ``InferenceSettings.to_run_json(card)`` where no model is built) followed by the writer's
    :data:`OUTPUT_OPTIONS` found in ``output`` (OutputWriter keywords; others, such as ``categories``,
    are not settings)."""
    return {**model, **{k: output[k] for k in OUTPUT_OPTIONS if k in output}}


def settings_fingerprint(settings: Mapping[str, Any]) -> str:
    """16 hex digits identifying the settings that decide a run's outputs (model, weights, thresholds,
    sizes, classes, formats...); runtime and speed-only settings (:data:`RUNTIME_ONLY` +
    :data:`SPEED_ONLY`) are left out."""
    relevant = {k: v for k, v in settings.items() if k not in RUNTIME_ONLY and k not in SPEED_ONLY}
    blob = json.dumps(relevant, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class RunFolder(Protocol):
    """Where a run's files go: relative names, atomic whole-file writes."""

    def read_text(self, rel: str) -> str: ...

    def write_bytes(self, rel: str, data: bytes) -> Any: ...


class LocalFolder:
    """A :class:`RunFolder` on the local file system (created on the first write)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def read_text(self, rel: str) -> str:
        return (self.root / rel).read_text()

    def write_bytes(self, rel: str, data: bytes) -> Path:
        return atomic_write_bytes(self.root / rel, data)


def _folder(out: str | os.PathLike | RunFolder) -> RunFolder:
    return LocalFolder(out) if isinstance(out, (str, os.PathLike)) else out


def read_run_json(out: str | os.PathLike | RunFolder) -> dict[str, Any] | None:
    """The folder's ``run.json``, or None if missing or unreadable."""
    try:
        doc = json.loads(_folder(out).read_text("run.json"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def summary_classes(categories: Sequence[str], keep: Sequence[str] | None = None) -> list[str]:
    """``summary.csv``'s class columns: the model's classes (``categories`` minus background and gaps)
    in model order, only those in ``keep`` (the run's ``classes``) when it is given."""
    real = [c for c in dict.fromkeys(categories) if c not in NOT_CLASSES]
    return real if keep is None else [c for c in real if c in set(keep)]


def summary_csv(results: Sequence[ImageResult], classes: Sequence[str] | None = None) -> str:
    """``summary.csv``'s text: image, status (ok / skipped / failed), instances, one column per class, error.

    ``classes``: the class columns (:func:`summary_classes`); a label found outside them gets a column
    after them, in order of appearance (None: only the labels found)."""
    columns: list[str] = list(classes or ())
    for r in results:
        for lab in r.counts:
            if lab not in columns:
                columns.append(lab)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["image", "status", "instances", *columns, "error"])
    for r in results:
        if r.error is not None:
            w.writerow([r.item.label, "failed", "", *([""] * len(columns)), r.error])
        else:
            status = "skipped" if r.skipped else "ok"
            w.writerow([r.item.label, status, r.n_instances, *(r.counts.get(c, 0) for c in columns), ""])
    return buf.getvalue()


def _timings(results: Sequence[ImageResult], seconds: float) -> dict[str, Any]:
    """Total seconds, images/s over the images this run processed, per-image seconds mean/median/p95."""
    per = sorted(r.seconds for r in results if r.error is None and not r.skipped)
    return {
        "total_s": round(seconds, 3),
        "images_per_s": round(len(per) / seconds, 4) if seconds > 0 and per else None,
        "per_image_s": {
            "mean": round(sum(per) / len(per), 4),
            "median": round(per[len(per) // 2], 4),
            "p95": round(per[min(len(per) - 1, int(0.95 * len(per)))], 4),
        }
        if per
        else None,
    }


def _json_bytes(doc: Mapping[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


@dataclass
class RunLedger:
    """One run's record in its output folder (see the module docstring).

    Use: :meth:`open` (reads the earlier ``run.json``, decides ``resume``), then the engine prepares
    (e.g. clears stale tables when not resuming), :meth:`start`, the work, :meth:`finish`.
    """

    folder: RunFolder
    settings: dict[str, Any]
    fingerprint: str
    #: skip the images an earlier run finished
    resume: bool

    @classmethod
    def open(cls, out: str | os.PathLike | RunFolder, settings: Mapping[str, Any], *, skip_existing: bool | None = None) -> RunLedger:
        """``skip_existing``: True skip finished images, False redo everything, None (default) skip
        when ``out/run.json`` has the same settings fingerprint."""
        folder = _folder(out)
        fingerprint = settings_fingerprint(settings)
        previous = read_run_json(folder)
        same = previous is not None and previous.get("fingerprint") == fingerprint
        return cls(folder, dict(settings), fingerprint, same if skip_existing is None else bool(skip_existing))

    def start(self, *, images: int, extra: Mapping[str, Any] | None = None) -> None:
        """The first ``run.json`` (``"complete": false``)."""
        doc = {"complete": False, "fingerprint": self.fingerprint, "settings": self.settings, "images": images, **(extra or {})}
        self.folder.write_bytes("run.json", _json_bytes(doc))

    def summary(self, results: Sequence[ImageResult], *, seconds: float) -> RunSummary:
        return RunSummary(results=list(results), seconds=seconds, fingerprint=self.fingerprint, resumed=self.resume)

    def finish(self, summary: RunSummary, *, model_card: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None) -> list[Any]:
        """``summary.csv`` and the final ``run.json``; returns where they were written."""
        results = summary.results
        ok = [r for r in results if r.error is None]
        processed = sum(not r.skipped for r in ok)
        doc = {
            "complete": True,
            "fingerprint": self.fingerprint,
            "settings": self.settings,
            "model_card": model_card,
            "versions": versions(),
            "images": len(results),
            "succeeded": len(ok),
            "processed": processed,
            "skipped": len(ok) - processed,
            "failed": [{"image": r.item.label, "error": r.error} for r in results if r.error is not None],
            "timings": _timings(results, summary.seconds),
            **(extra or {}),
        }
        classes = None
        if model_card and model_card.get("categories"):
            classes = summary_classes(model_card["categories"], self.settings.get("classes"))
        return [
            self.folder.write_bytes("summary.csv", summary_csv(results, classes).encode("utf-8")),
            self.folder.write_bytes("run.json", _json_bytes(doc)),
        ]


# -- one run per folder, and a full disk ------------------------------------------------------------
LOCK_NAME = ".masklab.lock"


class FolderBusyError(MasklabError):
    """Another masklab run holds the output folder's lock (exit 1)."""


class UnwrittenError(MasklabError):
    """The run's summary could not be written (a full disk); the message lists every failed image (exit 1)."""


def check_writable(out: str | os.PathLike) -> Path:
    """``out`` created if missing; a :class:`~masklab.errors.UsageError` naming it when it cannot be
    (entry points call this before loading a model)."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not os.access(out, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "Permission denied")
    except OSError as e:
        raise UsageError(f"--out {out}: cannot write there ({e.strerror}); choose a folder you can write to") from None
    return out


@contextlib.contextmanager
def folder_lock(out: str | os.PathLike):
    """Hold ``out/.masklab.lock`` (an exclusive ``flock``, released when the process ends, even by
    SIGKILL) for a run's duration: a second run into the same folder fails at once with
    :class:`FolderBusyError` instead of doing all the work again and overwriting ``run.json``. An
    unwritable folder is a :class:`~masklab.errors.UsageError` naming it."""
    import fcntl

    out = check_writable(out)
    try:
        fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UsageError(f"--out {out}: cannot write there ({e.strerror}); choose a folder you can write to") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            raise FolderBusyError(
                f"another masklab run ({holder}) is writing to {out}; wait for it to finish, or use another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {platform.node()}".encode(), 0)
        yield
    finally:
        os.close(fd)


def unwritten_error(out: str | os.PathLike, summary: RunSummary, err: OSError) -> UnwrittenError:
    """The error for a run whose summary could not be written: what happened, where, and every image
    without outputs (failed writes included), so nothing is lost silently. A rerun redoes exactly those."""
    full = err.errno in (errno.ENOSPC, errno.EDQUOT)
    what = "disk full" if full else "cannot write"
    lines = [f"{what}: the run's summary could not be written to {out} ({err.strerror}); "
             f"{len(summary.failures)} of {len(summary.results)} images have no outputs:"]
    lines += [f"  failed: {r.error}" for r in summary.failures]
    lines.append("free space (or fix the folder) and rerun the same command: finished images are skipped")
    return UnwrittenError("\n".join(lines))
