"""Segment a list of images into an output folder as a bounded pipeline (the local engine).

    decode pool (threads)         main thread               writer pool (threads)
    read + sniff + decode   ->    Segmenter.predict    ->    RLE, measurements, overlays,
    + EXIF/mode conversion        (batches of             atomic writes (OutputWriter)
                                  ``batch_size``)

Eager torch runs in the main thread (it uses every core itself). A runtime with several requests
(OpenVINO: one per stream, plus one) gets that many batches in flight on inference threads; each
goes to the writers as soon as it is done, and results land by input index.

At most ``prefetch`` decoded images wait for inference and at most ``pending_writes`` results wait
for the writers, so memory stays flat however many images there are; a result keeps only its
per-class counts once written (``keep_instances=True`` keeps the :class:`Instances`).

A file that fails (unreadable, corrupt, too large, inference or write error) is recorded with a
one-line reason and skipped; the run goes on. Resume: an image is done when every file
``OutputWriter.outputs_for(stem)`` names exists and its JSON names the same source; those are
skipped when the run resumes (:class:`~masklab.runs.ledger.RunLedger`: by default when ``run.json``
in the folder has the same settings fingerprint).
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from masklab.errors import ImageLoadError, UsageError
from masklab.io.formats.writer import OutputWriter
from masklab.io.images import LoadedImage, load_image
from masklab.io.inputs import InputItem, UrlLimits, fetch_url
from masklab.runs.ledger import ImageResult, RunLedger, RunSummary, folder_lock, one_line, unwritten_error
from masklab.structures.instances import Instances

__all__ = ["Prepared", "run_segment", "predict_batch", "write_result"]


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
    item: InputItem, *, writer: OutputWriter, skip: bool, max_pixels: int | None, url_limits: UrlLimits, read_options=None
) -> Prepared:
    """Runs in the decode pool: either "already done" (with counts), a decoded image, or a reason."""
    t0 = time.perf_counter()
    if item.error is not None:
        return Prepared(t0, error=item.error)
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
            image = load_image(item.path, name=str(item.path), max_pixels=max_pixels, options=read_options, plane=item.plane)
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
        writer.write(stem=item.stem, image_name=item.source, image=image.array, instances=inst, meta=image.meta)
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


def _check_sizes(batch_size: int, workers: int | None) -> int:
    """Refuse bad sizes; returns the worker count (default: CPUs available, at most 4)."""
    if batch_size < 1:
        raise UsageError(f"batch_size must be >= 1, found {batch_size}")
    if workers is None:
        workers = max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2))
    if workers < 1:
        raise UsageError(f"workers must be >= 1, found {workers}")
    return workers


class _Pipeline:
    """One run's bounded pipeline: decoded images in input order (at most ``ahead`` waiting), batches of
    ``batch_size`` through the segmenter, at most ``max_pending`` results waiting for the writers;
    results land by input index and tick the progress bar."""

    def __init__(self, segmenter, writer: OutputWriter, n: int, *, batch_size: int, workers: int, keep: bool, bar,
                 on_result: Callable[[ImageResult], None] | None = None) -> None:
        self.segmenter, self.writer, self.bar, self.on_result = segmenter, writer, bar, on_result
        self.batch_size, self.workers, self.keep = batch_size, workers, keep
        self.results: list[ImageResult | None] = [None] * n
        self.pending: deque[tuple[int, Future]] = deque()
        self.max_pending = 2 * workers + batch_size
        self.n_failed = 0
        # a runtime that takes several images at once (OpenVINO: a request per stream + 1) gets that many
        # batches in flight, so that decoding, pasting and writing overlap inference
        self.concurrency = max(1, int(getattr(segmenter, "concurrency", 1)))
        self.inflight: list[tuple[list, Future]] = []  # batches being segmented, in submission order

    def run(self, items: Sequence[InputItem], prepare: Callable[[InputItem], Prepared]) -> list[ImageResult]:
        ahead = max(2 * self.batch_size, 2 * self.workers, 2 * self.concurrency * self.batch_size)
        with (
            ThreadPoolExecutor(self.workers, thread_name_prefix="masklab-decode") as decode_pool,
            ThreadPoolExecutor(self.workers, thread_name_prefix="masklab-write") as self.write_pool,
            ThreadPoolExecutor(self.concurrency, thread_name_prefix="masklab-infer") as self.infer_pool,
        ):
            batch: list[tuple[int, InputItem, Prepared]] = []
            for (i, item), prep in _ordered_prefetch(decode_pool, lambda ix: prepare(ix[1]), enumerate(items), ahead):
                if prep.error is not None:
                    self.record(i, ImageResult(item, error=prep.error))
                elif prep.done is not None:
                    self.record(i, ImageResult(item, counts=prep.done, n_instances=sum(prep.done.values()), skipped=True))
                else:
                    batch.append((i, item, prep))
                    if len(batch) >= self.batch_size:
                        self.flush(batch)
                        batch = []
            if batch:
                self.flush(batch)
            self.deliver(0)
            self.harvest(0)
        return [r for r in self.results if r is not None]

    def record(self, i: int, r: ImageResult) -> None:
        self.results[i] = r
        if r.error is not None:
            self.n_failed += 1
            self.bar.set_postfix_str(f"failed={self.n_failed}", refresh=False)
        if self.on_result is not None:
            self.on_result(r)
        self.bar.update(1)

    def harvest(self, block_until: int) -> None:
        """Collect finished writes until at most ``block_until`` are in flight."""
        while len(self.pending) > block_until:
            i, f = self.pending.popleft()
            self.record(i, f.result())

    def flush(self, batch: list[tuple[int, InputItem, Prepared]]) -> None:
        """Start segmenting one batch; results go to the writers in input order."""
        images = [p.image for _, _, p in batch]
        if self.concurrency == 1:  # eager torch: it uses every core itself; run it here
            self.write_outputs(batch, predict_batch(self.segmenter, images))  # type: ignore[arg-type]
            return
        self.inflight.append((batch, self.infer_pool.submit(predict_batch, self.segmenter, images)))
        self.deliver(self.concurrency - 1)

    def deliver(self, block_until: int) -> None:
        """Hand finished batches to the writers until at most ``block_until`` are in flight, each as soon as
        it is done: in a folder of mixed sizes a small image does not wait behind a large one, and the
        request it freed gets the next batch at once (results still land by input index)."""
        while len(self.inflight) > block_until:
            done, _ = wait([f for _, f in self.inflight], return_when=FIRST_COMPLETED)
            finished = [entry for entry in self.inflight if entry[1] in done]
            self.inflight = [entry for entry in self.inflight if entry[1] not in done]
            for batch, future in finished:  # oldest first among those done
                self.write_outputs(batch, future.result())

    def write_outputs(self, batch: list[tuple[int, InputItem, Prepared]], outs: list[Instances | str]) -> None:
        """Hand each result of one batch to the writers (a failed image is recorded at once)."""
        for (i, item, prep), inst in zip(batch, outs):
            if isinstance(inst, str):
                self.record(i, ImageResult(item, error=inst))
                continue
            self.harvest(self.max_pending - 1)
            job = self.write_pool.submit(write_result, self.writer, item, prep.image, inst, prep.t0, self.keep)
            self.pending.append((i, job))
        self.harvest(self.max_pending)


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
    read_options=None,
    on_result: Callable[[ImageResult], None] | None = None,
) -> RunSummary:
    """Segment ``items`` with ``segmenter`` into ``out_dir`` (per-image files via ``writer``, default an
    :class:`OutputWriter` with overlay style(s) ``viz``), then ``summary.csv`` and ``run.json``.

    Args:
        extra_settings: more entries for ``run.json``'s settings block (after ``segmenter.settings()``
            and ``viz``), e.g. the writer's options; they are part of the resume fingerprint.
        batch_size: images per ``segmenter.predict`` call (>1 helps on a GPU).
        workers: decode threads and writer threads each (default: CPUs available, at most 4).
        skip_existing: True: skip images whose outputs exist; False: redo everything; None (default):
            skip when ``out_dir/run.json`` has the same settings fingerprint (a resumed run).
        keep_instances: keep each image's :class:`Instances` in the returned results (memory grows
            with the number of images; for small runs and the demo).
        max_pixels: pixel cap per image (default ``$MASKLAB_MAX_PIXELS`` or 100 MP).
        url_limits: size/time limits for URL items.
        read_options: :class:`~masklab.io.planes.ReadOptions` (channels, intensity window, NIfTI axis) for
            stacks; items of stack files carry their plane (:func:`masklab.io.stacks.expand_planes`).
        on_result: called with each :class:`ImageResult` as it lands (in the main thread; the CLI prints
            its per-image line there).

    Raises :class:`~masklab.runs.ledger.FolderBusyError` when another run holds ``out_dir``'s lock, and
    :class:`~masklab.runs.ledger.UnwrittenError` (exit 1, every failed image listed) when the summary
    cannot be written (a full disk).
    """
    workers = _check_sizes(batch_size, workers)
    out = Path(out_dir)
    if writer is None:
        styles = [] if viz is None else [viz] if isinstance(viz, str) else list(viz)
        writer = OutputWriter(out, model_name=segmenter.spec.name, viz=styles)
    with folder_lock(out):  # a second run into the same folder is refused, not raced
        return _run_locked(items, out, segmenter, writer, viz=viz, progress=progress, extra_settings=extra_settings,
                           batch_size=batch_size, workers=workers, skip_existing=skip_existing,
                           keep_instances=keep_instances, max_pixels=max_pixels, url_limits=url_limits,
                           read_options=read_options, on_result=on_result)


def _run_locked(items, out: Path, segmenter, writer: OutputWriter, *, viz, progress, extra_settings, batch_size: int,
                workers: int, skip_existing, keep_instances: bool, max_pixels, url_limits, read_options,
                on_result=None) -> RunSummary:
    from tqdm.auto import tqdm

    ledger = RunLedger.open(out, {**segmenter.settings(), "viz": viz, **(extra_settings or {})}, skip_existing=skip_existing)
    ledger.start(images=len(items))
    show = (len(items) > 1) if progress is None else progress
    prepare = partial(_prepare, writer=writer, skip=ledger.resume, max_pixels=max_pixels, url_limits=url_limits or UrlLimits(),
                      read_options=read_options)
    if hasattr(segmenter, "plan"):  # backend auto: a long run may prepare the fast path after its first image
        segmenter.plan(images=len(items))
    t_run = time.perf_counter()
    try:
        with tqdm(total=len(items), desc="segment", unit="img", disable=not show, file=sys.stderr, smoothing=0.1) as bar:
            pipeline = _Pipeline(segmenter, writer, len(items), batch_size=batch_size, workers=workers,
                                 keep=keep_instances, bar=bar, on_result=on_result)
            results = pipeline.run(items, prepare)
    finally:
        if hasattr(segmenter, "end_run"):  # single images after the run: the lowest latency again
            segmenter.end_run()
    summary = ledger.summary(results, seconds=time.perf_counter() - t_run)
    runtime = getattr(segmenter, "runtime", None)
    extra = {"batch_size": batch_size, "workers": workers, "resumed": ledger.resume,
             "runtime": None if runtime is None else {"name": runtime.name, "precision": runtime.precision,
                                                      "streams": getattr(runtime, "streams", None)}}
    try:
        writer.finish([r.item.stem for r in summary.results if r.ok])
        ledger.finish(summary, model_card=segmenter.card.to_json(), extra=extra)
    except OSError as e:  # a full disk: say so and list every image whose outputs are missing
        raise unwritten_error(out, summary, e) from None
    return summary
