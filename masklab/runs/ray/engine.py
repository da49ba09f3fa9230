"""Batch segmentation on a Ray cluster with Ray Data: the local engine's outputs, spread over workers.

The pipeline: the input list becomes a Ray dataset of rows (input name, where a worker opens it, output
stem); ``map_batches`` sends batches of rows to a fixed pool of actors
(:class:`~masklab.runs.ray.worker.SegmentWorker`), each holding one ``Segmenter`` built once from the
run's :class:`~masklab.settings.InferenceSettings` (one actor per GPU on a GPU cluster, else CPU actors
with a share of the cores). Each actor reads its images (local path, http(s) URL or ``pyarrow.fs`` URI),
segments them, writes the per-image files through the same :class:`~masklab.io.formats.writer.OutputWriter`
as the local engine (with the local engine's inference and writing steps, so failures read the same), and
writes one Parquet part per batch: ``instances/part-<id>.parquet`` first, then ``images/part-<id>.parquet``
(the table a rerun reads: a stem listed there is done). Failures travel back to the driver as rows, never
as exceptions; the driver writes ``summary.csv`` and ``run.json`` through the run ledger
(:class:`~masklab.runs.ledger.RunLedger`), as the local engine does. The driver builds no model: it reads
the model's card (class names, defaults) with ``model_card_for``.

Why the actors write (and not a Ray Data ``write_parquet`` sink): a part is complete or absent, and its
ledger names exactly the images it covers, so a killed job resumes without losing or duplicating rows.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from masklab.errors import UsageError
from masklab.io.atomic import atomic_write_json
from masklab.io.formats.writer import OutputWriter
from masklab.io.inputs import InputItem
from masklab.models.card import ModelCard
from masklab.models.source import model_card_for
from masklab.runs.ledger import ImageResult, RunLedger, RunSummary, run_settings
from masklab.runs.ray.cluster import (
    WorkerPlan,
    actor_pool_kwargs,
    from_items_kwargs,
    part_size,
    plan_workers,
    ray_session,
)
from masklab.runs.ray.storage import Store, is_storage_uri, is_uri
from masklab.runs.ray.tables import IMAGES_DIR, INSTANCES_DIR, record_from_rows
from masklab.runs.ray.worker import ROW_COLUMNS, SegmentWorker
from masklab.settings import InferenceSettings

__all__ = ["driver_card", "worker_settings", "run_segment_ray"]


def _shared_path(value: str | None) -> str | None:
    """A local file, made absolute: Ray workers do not share the driver's cwd (names and URIs stay)."""
    if value is None or "://" in value or not Path(value).exists():
        return value
    return os.path.abspath(value)


def worker_settings(settings: InferenceSettings, *, device: str, threads: int) -> dict[str, Any]:
    """What every actor builds its model from (``InferenceSettings.to_json()``): ``settings`` with the
    device chosen for the cluster, the actor's thread count and local file paths made absolute."""
    moved = settings.replace(model=_shared_path(settings.model), weights=_shared_path(settings.weights))
    return moved.replace(device=device, threads=threads).to_json()


def driver_card(settings: InferenceSettings) -> ModelCard:
    """The card of the model ``settings`` names, read without building the network (the driver only
    checks and records; the actors build), with ``settings.classes`` checked against its classes."""
    card = model_card_for(settings)
    card.check_classes(settings.classes)
    return card


def _read_ledger(store: Store) -> dict[str, dict[str, Any]]:
    """Images finished by earlier runs into ``store``, by stem (the images-table rows). Removes instance
    parts that a killed run left without their ledger part: those images are redone, and the orphan
    rows would otherwise be duplicates."""
    ledger = store.list_files(IMAGES_DIR, ".parquet")
    for orphan in sorted(set(store.list_files(INSTANCES_DIR, ".parquet")) - set(ledger)):
        store.delete(f"{INSTANCES_DIR}/{orphan}")
    table = store.read_parquet([f"{IMAGES_DIR}/{p}" for p in ledger])
    return {} if table is None else {r["stem"]: r for r in table.to_pylist()}


def _clear_tables(store: Store) -> dict[str, dict[str, Any]]:
    """Start over: earlier parts would otherwise sit beside this run's rows as duplicates."""
    for folder in (IMAGES_DIR, INSTANCES_DIR):
        for name in store.list_files(folder, ".parquet"):
            store.delete(f"{folder}/{name}")
    return {}


def _split(items: Sequence[InputItem], done: dict[str, dict[str, Any]]) -> tuple[list[ImageResult | None], list[dict[str, Any]]]:
    """Results for the images an earlier run finished (same stem and source), rows for the others."""
    results: list[ImageResult | None] = [None] * len(items)
    todo: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        row = done.get(item.stem)
        if row is not None and row["image"] == item.source:
            results[i] = ImageResult(item, counts=json.loads(row["counts"]), n_instances=row["instances"], skipped=True)
        else:
            location = item.url or os.path.abspath(item.path)  # workers do not share the driver's cwd
            values = (i, str(item.path), location, item.stem, item.url or "")
            todo.append(dict(zip(ROW_COLUMNS, values)))
    return results, todo


def _run_actors(todo: list[dict[str, Any]], *, settings: InferenceSettings, address, num_cpus, num_workers, batch_size, show, **actor) -> tuple[WorkerPlan, list[dict]]:
    """Send ``todo`` through a pool of :class:`SegmentWorker` actors; the plan and one result row per image
    (``actor``: the rest of the actors' keywords)."""
    from tqdm.auto import tqdm

    rows: list[dict[str, Any]] = []
    with ray_session(address=address, num_cpus=num_cpus) as ray:
        plan = plan_workers(resources=ray.cluster_resources(), device=settings.device, num_workers=num_workers)
        part = part_size(len(todo), plan.workers, batch_size)
        ds = ray.data.from_items(todo, **from_items_kwargs(math.ceil(len(todo) / part)))
        mapped = ds.map_batches(
            SegmentWorker,
            batch_size=part,
            batch_format="numpy",
            fn_constructor_kwargs={
                "settings": worker_settings(settings, device=plan.device, threads=plan.threads),
                "threads": plan.threads,
                "model_batch": batch_size,
                **actor,
            },
            num_cpus=plan.cpus,
            **({"num_gpus": plan.gpus} if plan.gpus else {}),
            **actor_pool_kwargs(plan.workers),
        )
        with tqdm(total=len(todo), desc="segment (ray)", unit="img", disable=not show, file=sys.stderr) as bar:
            for row in mapped.iter_rows():
                rows.append(dict(row))
                bar.update(1)
    return plan, rows


def run_segment_ray(
    items: Sequence[InputItem],
    out: str | os.PathLike,
    *,
    inference: InferenceSettings,
    settings: dict[str, Any] | None = None,
    model_card: dict[str, Any] | None = None,
    writer_kwargs: dict[str, Any] | None = None,
    save_json: bool = True,
    address: str | None = None,
    num_workers: int | None = None,
    num_cpus: int | None = None,
    batch_size: int = 1,
    skip_existing: bool | None = None,
    max_pixels: int | None = None,
    progress: bool | None = None,
) -> RunSummary:
    """Segment ``items`` on Ray into ``out`` (a local folder or a ``pyarrow.fs`` URI such as ``s3://b/run``).

    Args:
        items: from :func:`~masklab.runs.ray.storage.expand_sources` (local paths, http(s) URLs,
            storage URIs); local paths must be readable on every node (a shared mount).
        inference: the model settings every actor builds its model from (a weights path in them must
            be readable on every node; local paths are made absolute).
        settings: ``run.json``'s settings block, fingerprinted for resuming (the local engine's:
            ``Segmenter.settings()`` plus output options); default: ``inference.to_run_json(card)`` plus
            the output options in ``writer_kwargs``, with ``model_card`` the card's.
        writer_kwargs: :class:`~masklab.io.formats.writer.OutputWriter` arguments besides the folder and
            model name (e.g. ``viz=["instance"]``), the same as the local engine's writer.
        save_json: keep the per-image ``<stem>.json`` files; the Parquet tables hold the same records
            and are written either way.
        address: a Ray cluster to join; None starts a local Ray with ``num_cpus`` CPUs (default: all).
        num_workers: model actors (default: one per GPU, else one per 4 CPUs).
        batch_size: images per forward pass on an actor.
        skip_existing: True: skip images in ``out``'s Parquet tables; False: start over (earlier Parquet
            parts are deleted); None: skip when ``out/run.json`` has the same settings fingerprint.
        max_pixels: pixel cap per image (default ``$MASKLAB_MAX_PIXELS`` or 100 MP).

    Returns the local engine's :class:`~masklab.runs.ledger.RunSummary`, results in input order.
    """
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, found {batch_size}")
    if is_uri(out) and not is_storage_uri(out):
        raise UsageError(f"--out must be a folder or a storage URI (s3://, gs://, file://...), found {out}")
    t_run = time.perf_counter()
    writer_kwargs = writer_kwargs or {}
    if settings is None:
        card = driver_card(inference)
        settings, model_card = run_settings(inference.to_run_json(card), writer_kwargs), model_card or card.to_json()
    out = str(out) if is_storage_uri(out) else os.path.abspath(out)
    store = Store(out)
    ledger = RunLedger.open(store, {**settings, "engine": "ray", "per_image_json": save_json}, skip_existing=skip_existing)
    done = _read_ledger(store) if ledger.resume else _clear_tables(store)
    ledger.start(images=len(items), extra={"engine": "ray"})
    results, todo = _split(items, done)
    plan, rows, wall_start = None, [], time.time()
    if todo:
        show = (len(todo) > 1) if progress is None else progress
        plan, rows = _run_actors(
            todo, settings=inference, address=address, num_cpus=num_cpus, num_workers=num_workers, batch_size=batch_size,
            show=show, writer_kwargs=writer_kwargs, out=out, save_json=save_json, max_pixels=max_pixels,
        )
    summary = ledger.summary(_merge(items, results, rows), seconds=time.perf_counter() - t_run)
    extra = {
        "engine": "ray",
        "resumed": ledger.resume,
        "batch_size": batch_size,
        "ray": _ray_record(plan, address, [float(r["done_at"]) - wall_start for r in rows]),
        "tables": {"instances": store.path(INSTANCES_DIR), "images": store.path(IMAGES_DIR)},
    }
    _finish(store, ledger, summary, model_card=model_card, extra=extra, writer_kwargs=writer_kwargs, save_json=save_json)
    return summary


def _merge(items: Sequence[InputItem], results: list[ImageResult | None], rows: list[dict[str, Any]]) -> list[ImageResult]:
    """Every input's result in input order: the earlier run's, the actors' rows, or "no result"."""
    results = list(results)
    for row in rows:
        i = int(row["index"])
        counts = json.loads(row["counts"])
        error = str(row["error"]) or None
        results[i] = ImageResult(items[i], error=error, seconds=float(row["seconds"]), counts=counts, n_instances=int(row["instances"]))
    lost = "no result came back from the Ray job"
    return [r or ImageResult(items[i], error=f"{items[i].source}: {lost}") for i, r in enumerate(results)]


def _ray_record(plan: WorkerPlan | None, address: str | None, finished_at: list[float]) -> dict[str, Any]:
    """``run.json``'s ``ray`` block: version, address, the actor pool, and the rate timings
    (``finished_at``: seconds from the start to each finished image)."""
    import ray

    return {
        "version": ray.__version__,
        "address": address or "local",
        "actors": None if plan is None else plan.workers,
        "cpus_each": None if plan is None else plan.cpus,
        "gpus_each": None if plan is None else plan.gpus,
        "threads_each": None if plan is None else plan.threads,
        "device": None if plan is None else plan.device,
        **_rate_timings(finished_at),
    }


def _rate_timings(finished_at: list[float]) -> dict[str, float | None]:
    """``first_result_s``: seconds from the start of the run to the first finished image (Ray start,
    actor start, model load, first image); ``steady_images_per_s``: images finished after that, per
    second after that (what a long job converges to)."""
    if not finished_at:
        return {"first_result_s": None, "steady_images_per_s": None}
    ts = sorted(finished_at)
    span = ts[-1] - ts[0]
    steady = (len(ts) - 1) / span if len(ts) > 1 and span > 0 else None
    return {"first_result_s": round(ts[0], 3), "steady_images_per_s": None if steady is None else round(steady, 4)}


def _finish(store: Store, ledger: RunLedger, summary: RunSummary, *, model_card, extra, writer_kwargs, save_json) -> None:
    """The run-level files, as the local engine writes them: the writer's own (``OutputWriter.finish``:
    COCO, measurements CSV...), then ``summary.csv`` and the final ``run.json`` (the ledger's)."""
    stems = [r.item.stem for r in summary.results if r.ok]
    model = ledger.settings.get("model", "")
    local = store.local_dir
    if local is not None and save_json:
        OutputWriter(local, model_name=model, **writer_kwargs).finish(stems)
    else:
        with tempfile.TemporaryDirectory(prefix="masklab-ray-") as tmp:
            # The writer builds run-level files from per-image JSONs: give it those records, rebuilt from
            # the Parquet tables, in a local folder, and copy what it writes to the store.
            writer = OutputWriter(tmp, model_name=model, **writer_kwargs)
            if set(writer.formats) != {"json"}:
                for stem, record in _records_from_tables(store, set(stems), model=model).items():
                    atomic_write_json(writer.json_path(stem), record)
                for path in writer.finish(stems):
                    store.write_bytes(Path(path).relative_to(tmp).as_posix(), Path(path).read_bytes())
    ledger.finish(summary, model_card=model_card, extra=extra)


def _records_from_tables(store: Store, stems: set[str], *, model: str) -> dict[str, dict[str, Any]]:
    """The per-image JSON records of ``stems``, rebuilt from the Parquet tables."""
    images = store.read_parquet([f"{IMAGES_DIR}/{p}" for p in store.list_files(IMAGES_DIR, ".parquet")])
    instances = store.read_parquet([f"{INSTANCES_DIR}/{p}" for p in store.list_files(INSTANCES_DIR, ".parquet")])
    rows: dict[str, list[dict[str, Any]]] = {}
    for r in [] if instances is None else instances.to_pylist():
        if r["stem"] in stems:
            rows.setdefault(r["stem"], []).append(r)
    return {
        img["stem"]: record_from_rows(img, rows.get(img["stem"], []), model=model)
        for img in ([] if images is None else images.to_pylist())
        if img["stem"] in stems
    }
