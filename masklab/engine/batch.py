"""Segment a list of images into an output folder as a bounded pipeline.

    decode pool (threads)         main thread               writer pool (threads)
    read + sniff + decode   ->    Segmenter.predict    ->    RLE, measurements, overlays,
    + EXIF/mode conversion        (batches of             atomic writes (OutputWriter)
                                  ``batch_size``)

At most ``prefetch`` decoded images wait for inference and at most ``pending_writes`` results wait
for the writers, so memory stays flat however many images there are; a result keeps only its
per-class counts once written (``keep_instances=True`` keeps the :class:`Instances`).

A file that fails (unreadable, corrupt, too large, inference or write error) is recorded with a
one-line reason and skipped; the run goes on. Resume: an image is done when every file
``OutputWriter.outputs_for(stem)`` names exists and its JSON names the same source; those are
skipped when ``skip_existing`` is on (default: when ``run.json`` in the folder has the same settings
fingerprint). ``run.json`` is written at the start (``"complete": false``) and at the end, so a
killed run leaves the fingerprint a rerun compares against.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import platform
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from masklab.errors import ImageLoadError, UsageError
from masklab.io.atomic import atomic_write_json, atomic_write_text
from masklab.io.formats.writer import OutputWriter, image_record
from masklab.io.images import LoadedImage, load_image
from masklab.io.inputs import InputItem, UrlLimits, fetch_url
from masklab.structures.instances import Instances

__all__ = [
    "ImageResult",
    "RunSummary",
    "image_record",
    "run_segment",
    "settings_fingerprint",
    "read_run_json",
    "write_run_files",
    "write_summary_csv",
    "one_line",
    "versions",
]

#: Settings that change how fast a run goes, not what it writes: left out of the fingerprint.
RUNTIME_ONLY_SETTINGS = ("device", "threads", "batch_size", "workers", "skip_existing", "progress", "engine")


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
    results: list[ImageResult] = field(default_factory=list)
    seconds: float = 0.0
    fingerprint: str = ""
    resumed: bool = False

    @property
    def failures(self) -> list[ImageResult]:
        return [r for r in self.results if r.error is not None]

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


def versions() -> dict[str, str]:
    import numpy
    import torch
    import torchvision

    from masklab import __version__

    return {
        "masklab": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
    }


def settings_fingerprint(settings: dict[str, Any]) -> str:
    """16 hex digits identifying the settings that decide a run's outputs (model, weights, thresholds,
    sizes, classes, formats...); speed-only settings (:data:`RUNTIME_ONLY_SETTINGS`) are left out."""
    relevant = {k: v for k, v in settings.items() if k not in RUNTIME_ONLY_SETTINGS}
    blob = json.dumps(relevant, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def read_run_json(out_dir: str | Path) -> dict[str, Any] | None:
    """The folder's ``run.json``, or None if missing or unreadable."""
    try:
        doc = json.loads((Path(out_dir) / "run.json").read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def write_summary_csv(path: str | Path, results: Sequence[ImageResult]) -> Path:
    """``summary.csv``: image, status (ok / skipped / failed), instances, one column per label, error."""
    classes: list[str] = []
    for r in results:
        for lab in r.counts:
            if lab not in classes:
                classes.append(lab)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["image", "status", "instances", *classes, "error"])
    for r in results:
        if r.error is not None:
            w.writerow([r.item.source, "failed", "", *([""] * len(classes)), r.error])
        else:
            status = "skipped" if r.skipped else "ok"
            w.writerow([r.item.source, status, r.n_instances, *(r.counts.get(c, 0) for c in classes), ""])
    return atomic_write_text(path, buf.getvalue())


def write_run_files(
    out_dir: str | Path,
    results: Sequence[ImageResult],
    settings: dict[str, Any],
    *,
    seconds: float,
    model_card: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> list[Path]:
    """Write ``summary.csv`` and the final ``run.json`` for a finished run (also used by other engines).

    ``run.json`` holds the settings and their fingerprint, versions, model card, counts (images,
    succeeded, processed, skipped), every failure with its reason, and timings (total, images/s over
    the images processed by this run, per-image seconds mean/median/p95).
    """
    out = Path(out_dir)
    ok = [r for r in results if r.error is None]
    done_now = [r for r in ok if not r.skipped]
    per = sorted(r.seconds for r in done_now)
    doc = {
        "complete": True,
        "fingerprint": settings_fingerprint(settings),
        "settings": settings,
        "model_card": model_card,
        "versions": versions(),
        "images": len(results),
        "succeeded": len(ok),
        "processed": len(done_now),
        "skipped": len(ok) - len(done_now),
        "failed": [{"image": r.item.source, "error": r.error} for r in results if r.error is not None],
        "timings": {
            "total_s": round(seconds, 3),
            "images_per_s": round(len(done_now) / seconds, 4) if seconds > 0 and done_now else None,
            "per_image_s": {
                "mean": round(sum(per) / len(per), 4),
                "median": round(per[len(per) // 2], 4),
                "p95": round(per[min(len(per) - 1, int(0.95 * len(per)))], 4),
            }
            if per
            else None,
        },
        **(extra or {}),
    }
    return [write_summary_csv(out / "summary.csv", results), atomic_write_json(out / "run.json", doc, indent=2)]


# -- the pipeline --------------------------------------------------------------------------------


@dataclass
class Prepared:
    """One input after the decode step: ``image`` on success, ``error`` (one line) on failure, or ``done``
    (instance counts read back from an earlier run's JSON) when resume skips it."""

    t0: float
    image: LoadedImage | None = None
    error: str | None = None
    done: dict[str, int] | None = None  # counts read back from an earlier run's JSON


def _counts_from_record(rec: dict[str, Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for d in rec.get("instances", []):
        counts[d["label"]] = counts.get(d["label"], 0) + 1
    return counts


def _prepare(
    item: InputItem, writer: OutputWriter, skip: bool, max_pixels: int | None, url_limits: UrlLimits
) -> Prepared:
    """Runs in the decode pool: either "already done" (with counts), a decoded image, or a reason."""
    t0 = time.perf_counter()
    if skip and all(p.is_file() for p in writer.outputs_for(item.stem)):
        try:
            rec = writer.read_record(item.stem)
            if rec.get("image") == item.source:
                return Prepared(t0, done=_counts_from_record(rec))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass  # unreadable or foreign: segment it again
    try:
        if item.url is not None:
            image = load_image(fetch_url(item.url, limits=url_limits), name=item.url, max_pixels=max_pixels)
        else:
            image = load_image(item.path, name=str(item.path), max_pixels=max_pixels)
    except ImageLoadError as e:
        return Prepared(t0, error=one_line(e))
    except Exception as e:  # a batch never dies on one bad item
        return Prepared(t0, error=f"{item.source}: unexpected error while loading ({one_line(e)})")
    return Prepared(t0, image=image)


def write_result(
    writer: OutputWriter, item: InputItem, image: LoadedImage, inst: Instances, t0: float, keep: bool
) -> ImageResult:
    """Runs in the writer pool: RLE, measurements, overlays and the atomic writes for one image."""
    try:
        writer.write(stem=item.stem, image_name=item.source, image=image.array, instances=inst)
    except Exception as e:
        return ImageResult(item, error=f"{item.source}: writing outputs failed ({one_line(e)})")
    return ImageResult(
        item,
        instances=inst if keep else None,
        seconds=time.perf_counter() - t0,
        counts=inst.counts(),
        n_instances=len(inst),
    )


def _ordered_prefetch(
    pool: ThreadPoolExecutor, fn: Callable[[Any], Any], xs: Iterable[Any], ahead: int
) -> Iterator[tuple[Any, Any]]:
    """``(x, fn(x))`` in input order, with at most ``ahead`` calls submitted but not yet consumed."""
    window: deque[tuple[Any, Future]] = deque()
    for x in xs:
        window.append((x, pool.submit(fn, x)))
        if len(window) >= ahead:
            x0, f = window.popleft()
            yield x0, f.result()
    while window:
        x0, f = window.popleft()
        yield x0, f.result()


def predict_batch(segmenter, images: list[LoadedImage]) -> list[Instances | str]:
    """Inference for one batch; on failure each image is retried alone so one bad item fails alone."""
    try:
        return list(segmenter.predict(images))
    except Exception as e:
        if len(images) == 1:
            return [f"{images[0].name}: inference failed ({one_line(e)})"]
    out: list[Instances | str] = []
    for im in images:
        out.extend(predict_batch(segmenter, [im]))
    return out


def run_segment(
    items: Sequence[InputItem],
    out_dir: str | Path,
    segmenter,
    *,
    viz: str | Sequence[str] | None = "instance",
    progress: bool | None = None,
    extra_settings: dict | None = None,
    writer: OutputWriter | None = None,
    batch_size: int = 1,
    workers: int | None = None,
    skip_existing: bool | None = None,
    keep_instances: bool = False,
    max_pixels: int | None = None,
    url_limits: UrlLimits | None = None,
) -> RunSummary:
    """Segment ``items`` with ``segmenter`` into ``out_dir`` (per-image files via ``writer``, default an
    :class:`OutputWriter` with overlay style(s) ``viz``), then ``summary.csv`` and ``run.json``.

    Args:
        batch_size: images per ``segmenter.predict`` call (>1 helps on a GPU).
        workers: decode threads and writer threads each (default: CPUs available, at most 4).
        skip_existing: True: skip images whose outputs exist; False: redo everything; None (default):
            skip when ``out_dir/run.json`` has the same settings fingerprint (a resumed run).
        keep_instances: keep each image's :class:`Instances` in the returned results (memory grows
            with the number of images; for small runs and the demo).
        max_pixels: pixel cap per image (default ``$MASKLAB_MAX_PIXELS`` or 100 MP).
        url_limits: size/time limits for URL items.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise UsageError(f"batch_size must be >= 1, found {batch_size}")
    if workers is None:
        workers = max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2))
    if workers < 1:
        raise UsageError(f"workers must be >= 1, found {workers}")
    out = Path(out_dir)
    if writer is None:
        styles = [] if viz is None else [viz] if isinstance(viz, str) else list(viz)
        writer = OutputWriter(out, model_name=segmenter.spec.name, viz=styles)
    settings = {**segmenter.settings(), "viz": viz, **(extra_settings or {})}
    fingerprint = settings_fingerprint(settings)
    previous = read_run_json(out)
    same = previous is not None and previous.get("fingerprint") == fingerprint
    skip = same if skip_existing is None else bool(skip_existing)
    out.mkdir(parents=True, exist_ok=True)
    # Written first so that a killed run still tells the rerun which settings its outputs came from.
    atomic_write_json(
        out / "run.json",
        {"complete": False, "fingerprint": fingerprint, "settings": settings, "images": len(items)},
        indent=2,
    )

    summary = RunSummary(fingerprint=fingerprint, resumed=skip)
    results: list[ImageResult | None] = [None] * len(items)
    show = (len(items) > 1) if progress is None else progress
    bar = tqdm(total=len(items), desc="segment", unit="img", disable=not show, file=sys.stderr, smoothing=0.1)
    ahead = max(2 * batch_size, 2 * workers)
    pending: deque[tuple[int, Future]] = deque()
    max_pending = 2 * workers + batch_size
    limits = url_limits or UrlLimits()
    t_run = time.perf_counter()

    n_failed = 0

    def record(i: int, r: ImageResult) -> None:
        nonlocal n_failed
        results[i] = r
        if r.error is not None:
            n_failed += 1
            bar.set_postfix_str(f"failed={n_failed}", refresh=False)
        bar.update(1)

    def harvest(block_until: int) -> None:
        while len(pending) > block_until:
            i, f = pending.popleft()
            record(i, f.result())

    def flush(batch: list[tuple[int, InputItem, Prepared]]) -> None:
        outs = predict_batch(segmenter, [p.image for _, _, p in batch])  # type: ignore[misc]
        for (i, item, prep), inst in zip(batch, outs):
            if isinstance(inst, str):
                record(i, ImageResult(item, error=inst))
                continue
            harvest(max_pending - 1)
            pending.append((i, write_pool.submit(write_result, writer, item, prep.image, inst, prep.t0, keep_instances)))
        harvest(max_pending)

    with (
        ThreadPoolExecutor(workers, thread_name_prefix="masklab-decode") as decode_pool,
        ThreadPoolExecutor(workers, thread_name_prefix="masklab-write") as write_pool,
    ):
        try:
            batch: list[tuple[int, InputItem, Prepared]] = []
            prep_fn = lambda ix: _prepare(ix[1], writer, skip, max_pixels, limits)  # noqa: E731
            for (i, item), prep in _ordered_prefetch(decode_pool, prep_fn, enumerate(items), ahead):
                if prep.error is not None:
                    record(i, ImageResult(item, error=prep.error))
                elif prep.done is not None:
                    record(i, ImageResult(item, counts=prep.done, n_instances=sum(prep.done.values()), skipped=True))
                else:
                    batch.append((i, item, prep))
                    if len(batch) >= batch_size:
                        flush(batch)
                        batch = []
            if batch:
                flush(batch)
            harvest(0)
        finally:
            bar.close()

    summary.results = [r for r in results if r is not None]
    summary.seconds = time.perf_counter() - t_run
    writer.finish([r.item.stem for r in summary.results if r.ok])
    write_run_files(
        out,
        summary.results,
        settings,
        seconds=summary.seconds,
        model_card=segmenter.card.to_json(),
        extra={"batch_size": batch_size, "workers": workers, "resumed": skip},
    )
    return summary
