"""Batch segmentation on a Ray cluster with Ray Data: the local engine's outputs, spread over workers.

The pipeline: the input list becomes a Ray dataset of rows (input name, where a worker opens it, output
stem); ``map_batches`` sends batches of rows to a fixed pool of actors (:class:`_SegmentWorker`), each
holding one :class:`~masklab.engine.segmenter.Segmenter` built once (one per GPU on a GPU cluster, else
CPU actors with a share of the cores). Each actor reads its images (local path, http(s) URL or
``pyarrow.fs`` URI), segments them, writes the per-image files through the same
:class:`~masklab.io.formats.writer.OutputWriter` as the local engine (with the local engine's inference
and writing steps, so failures read the same), and writes one Parquet part per batch:
``instances/part-<id>.parquet`` first, then ``images/part-<id>.parquet`` (the ledger a rerun reads: a
stem listed there is done). Failures travel back to the driver as rows, never as exceptions; the driver
writes ``summary.csv`` and ``run.json``.

Why the actors write (and not a Ray Data ``write_parquet`` sink): a part is complete or absent, and its
ledger names exactly the images it covers, so a killed job resumes without losing or duplicating rows.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from masklab.engine.batch import ImageResult, RunSummary, one_line, settings_fingerprint, write_run_files
from masklab.engine.distributed.storage import Store, is_storage_uri, is_uri, read_bytes
from masklab.engine.distributed.tables import IMAGES_DIR, INSTANCES_DIR, image_table, instance_table
from masklab.errors import ImageLoadError, MissingDependencyError, UsageError
from masklab.io.inputs import InputItem

__all__ = [
    "RAY_INSTALL",
    "WorkerPlan",
    "require_ray",
    "ray_session",
    "actor_pool_kwargs",
    "plan_workers",
    "run_segment_ray",
]

RAY_INSTALL = 'pip install "masklab[ray]"'
#: Most images per ``map_batches`` call (= per Parquet part); fewer for small runs so every worker gets work.
MAX_PART_IMAGES = 256


def require_ray():
    """Import and return ``ray`` (with Ray Data and pyarrow), or raise with the install line."""
    try:
        import pyarrow  # noqa: F401
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise MissingDependencyError(f"the Ray engine needs ray[data] and pyarrow ({e.name} is not installed): {RAY_INSTALL}") from None
    return ray


def _ray_version() -> tuple[int, int]:
    import ray

    major, minor = (int(v) for v in ray.__version__.split(".")[:2])
    return major, minor


def actor_pool_kwargs(size: int) -> dict[str, Any]:
    """The ``map_batches`` keyword for "a fixed pool of ``size`` actors", as the installed Ray spells it.

    The one place that knows the API history: Ray before 2.9 only had ``compute=ActorPoolStrategy(...)``;
    2.9-2.50 preferred ``concurrency=size``; 2.51 deprecated ``concurrency`` for
    ``compute=ActorPoolStrategy(size=...)`` again.
    """
    import inspect

    import ray.data

    params = inspect.signature(ray.data.Dataset.map_batches).parameters
    if "concurrency" in params and (2, 9) <= _ray_version() < (2, 51):
        return {"concurrency": size}
    return {"compute": ray.data.ActorPoolStrategy(size=size)}


def _from_items_kwargs(num_blocks: int) -> dict[str, int]:
    """``from_items``'s block count keyword: ``override_num_blocks`` (Ray >= 2.10) or ``parallelism``."""
    import inspect

    import ray.data

    params = inspect.signature(ray.data.from_items).parameters
    return {"override_num_blocks": num_blocks} if "override_num_blocks" in params else {"parallelism": num_blocks}


@contextmanager
def ray_session(*, address: str | None = None, num_cpus: int | None = None, progress: bool = False) -> Iterator[Any]:
    """Join the cluster at ``address`` (``"auto"``, ``"host:6379"``, ``"ray://host:10001"``), or start a
    private local Ray with ``num_cpus`` CPUs (default: all) when ``address`` is None. A Ray already
    initialised in this process is used as it is and left running.

    A local Ray is quiet, offline and private: no dashboard, no usage statistics
    (``RAY_USAGE_STATS_ENABLED=0``), its servers on the loopback interface only
    (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: Ray's single-machine mode), workers' output not echoed.
    Both variables are only defaults: a value already in the environment wins.
    """
    import logging

    if address is None:
        # Read by Ray when it is imported (the loopback choice) and by the processes ray.init starts.
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray = require_ray()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    ctx.print_on_execution_start = progress
    if not progress:
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    if ray.is_initialized():
        yield ray
        return
    common = {"include_dashboard": False, "log_to_driver": progress, "logging_level": logging.WARNING}
    if address:
        try:
            ray.init(address=address, **common)
        except ConnectionError as e:
            raise UsageError(
                f"cannot join the Ray cluster at {address} ({one_line(e)}): is `ray start --head` running there? "
                "A cluster with token authentication (Ray's default for `ray start`) also needs RAY_AUTH_MODE=token "
                "here, with its token in ~/.ray/auth_token or RAY_AUTH_TOKEN"
            ) from None
    else:
        ray.init(address="local", num_cpus=num_cpus, **common)
    try:
        yield ray
    finally:
        ray.shutdown()


@dataclass(frozen=True)
class WorkerPlan:
    """How many model actors and what each holds: ``cpus``/``gpus`` are Ray resources per actor,
    ``threads`` the torch CPU threads each uses, ``device`` ``"cuda"`` or ``"cpu"``."""

    workers: int
    cpus: float
    gpus: int
    threads: int
    device: str


def plan_workers(*, resources: dict[str, float], device: str = "auto", num_workers: int | None = None) -> WorkerPlan:
    """Choose the actor pool for a cluster with ``resources`` (``ray.cluster_resources()``).

    GPUs present and ``device`` auto/cuda: one actor per GPU (``num_gpus=1`` each), or ``num_workers``.
    Otherwise CPU actors: ``num_workers`` (default one per 4 CPUs, at least 1), the CPUs shared out evenly,
    each actor's torch using as many threads as it holds CPUs (1 when the pool is larger than the CPUs).
    """
    if num_workers is not None and num_workers < 1:
        raise UsageError(f"--num-workers must be at least 1, found {num_workers}")
    gpus = int(resources.get("GPU", 0))
    cpus = max(1, int(resources.get("CPU", 1)))
    if device.startswith("cuda") and gpus == 0:
        raise UsageError("device 'cuda' was asked for but the Ray cluster has no GPUs (use --device cpu or auto)")
    if gpus > 0 and device != "cpu":
        n = num_workers or gpus
        # One CPU reserved and one torch thread: the GPU does the work, and a larger reservation could
        # leave a GPU node unable to place all its actors.
        return WorkerPlan(workers=n, cpus=1, gpus=1, threads=1, device="cuda")
    n = num_workers or max(1, cpus // 4)
    share = cpus / n
    # Whole CPUs when they divide out, else a fraction so that every actor of the pool can be placed.
    cpus_each = float(int(share)) if share >= 1 else round(share, 3)
    return WorkerPlan(workers=n, cpus=cpus_each, gpus=0, threads=max(1, int(share)), device="cpu")


class _SegmentWorker:
    """A Ray Data actor: one Segmenter, built once; ``__call__`` segments and writes one batch of rows.

    Loading, inference and per-image writing are the local engine's own steps
    (``masklab.engine.batch``), so both engines fail alike and write the same files.
    """

    def __init__(
        self,
        *,
        segmenter_kwargs: dict[str, Any],
        writer_kwargs: dict[str, Any],
        out: str,
        save_json: bool,
        threads: int,
        model_batch: int,
        max_pixels: int | None,
    ) -> None:
        # Before torch starts its thread pools: each actor uses its share of the node, not every core.
        os.environ["MASKLAB_NUM_THREADS"] = str(threads)
        from masklab.engine.segmenter import Segmenter
        from masklab.io.formats.writer import OutputWriter

        self.segmenter = Segmenter(**segmenter_kwargs)
        self.model_name = self.segmenter.spec.name
        self.store = Store(out)
        self.model_batch = model_batch
        self.max_pixels = max_pixels
        self.save_json = save_json
        # Per-image files go straight into a local output folder. For a storage URI, or when the
        # per-image JSON is not kept, the same writer writes into a local scratch folder and the files
        # are then copied to the store (all but the JSON when it is not kept).
        direct = self.store.local_dir if save_json else None
        self.scratch = None if direct else Path(tempfile.mkdtemp(prefix="masklab-ray-"))
        self.writer = OutputWriter(direct or self.scratch, model_name=self.model_name, **writer_kwargs)

    def _load(self, item: InputItem, location: str):
        """A ``Prepared``: the decoded image or a one-line reason, worded as the local engine words it
        (``location``: where this worker opens a local item, its absolute path)."""
        from masklab.engine.batch import Prepared
        from masklab.io.images import load_image
        from masklab.io.inputs import UrlLimits, fetch_url

        t0 = time.perf_counter()
        try:
            if item.url is None:
                image = load_image(location, name=item.source, max_pixels=self.max_pixels)
            elif is_storage_uri(item.url):
                image = load_image(read_bytes(item.url), name=item.url, max_pixels=self.max_pixels)
            else:
                image = load_image(fetch_url(item.url, limits=UrlLimits()), name=item.url, max_pixels=self.max_pixels)
        except ImageLoadError as e:
            return Prepared(t0, error=one_line(e))
        except Exception as e:  # storage errors (permissions, network) are this image's, not the job's
            return Prepared(t0, error=f"{item.source}: unexpected error while loading ({one_line(e)})")
        return Prepared(t0, image=image)

    def _upload(self, stem: str) -> None:
        """Move one image's files from the scratch folder (it holds only that image's) to the store."""
        if self.scratch is None:
            return
        for p in sorted(q for q in self.scratch.rglob("*") if q.is_file()):
            if self.save_json or p != self.writer.json_path(stem):
                self.store.write_bytes(p.relative_to(self.scratch).as_posix(), p.read_bytes())
            p.unlink()

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        from masklab.engine.batch import predict_batch, write_result
        from masklab.io.formats.writer import image_record

        columns = ("index", "path", "location", "stem", "url")
        rows = list(zip(*(batch[c].tolist() for c in columns)))
        out: dict[str, list] = {k: [] for k in ("index", "error", "instances", "counts", "seconds", "done_at")}
        finished: list[tuple[str, dict, float]] = []

        def report(index: int, r: ImageResult) -> None:
            # done_at: wall-clock time the image finished on this worker (the driver receives results
            # in bursts, so its own arrival times would not show the processing rate)
            for k, v in zip(out, (index, r.error or "", r.n_instances, json.dumps(r.counts), r.seconds, time.time())):
                out[k].append(v)

        for start in range(0, len(rows), self.model_batch):
            loaded = []
            for index, path, location, stem, url in rows[start : start + self.model_batch]:
                item = InputItem(Path(path), stem, url or None)
                prep = self._load(item, location)
                if prep.error is not None:
                    report(index, ImageResult(item, error=prep.error))
                else:
                    loaded.append((index, item, prep))
            if not loaded:
                continue
            for (index, item, prep), inst in zip(loaded, predict_batch(self.segmenter, [p.image for *_, p in loaded])):
                if isinstance(inst, str):
                    report(index, ImageResult(item, error=inst))
                    continue
                result = write_result(self.writer, item, prep.image, inst, prep.t0, False)
                if result.ok:
                    try:
                        self._upload(item.stem)
                    except Exception as e:
                        result = ImageResult(item, error=f"{item.source}: writing outputs failed ({one_line(e)})")
                if result.ok:
                    finished.append((item.stem, image_record(item.source, inst, self.model_name), result.seconds))
                report(index, result)
        if finished:
            part = f"part-{uuid.uuid4().hex}.parquet"
            # Instances first, the ledger last: a ledger part exists only when its instances part does.
            self.store.write_parquet(f"{INSTANCES_DIR}/{part}", instance_table([(s, r) for s, r, _ in finished]))
            self.store.write_parquet(f"{IMAGES_DIR}/{part}", image_table(finished))
        return out

    def __del__(self) -> None:
        if getattr(self, "scratch", None) is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


def _read_ledger(store: Store) -> dict[str, dict[str, Any]]:
    """Images finished by earlier runs into ``store``, by stem (the images-table rows). Removes instance
    parts that a killed run left without their ledger part: those images are redone, and the orphan
    rows would otherwise be duplicates."""
    ledger = store.list_files(IMAGES_DIR, ".parquet")
    for orphan in sorted(set(store.list_files(INSTANCES_DIR, ".parquet")) - set(ledger)):
        store.delete(f"{INSTANCES_DIR}/{orphan}")
    table = store.read_parquet([f"{IMAGES_DIR}/{p}" for p in ledger])
    return {} if table is None else {r["stem"]: r for r in table.to_pylist()}


def _clear_tables(store: Store) -> None:
    for folder in (IMAGES_DIR, INSTANCES_DIR):
        for name in store.list_files(folder, ".parquet"):
            store.delete(f"{folder}/{name}")


def _previous_run(store: Store) -> dict[str, Any] | None:
    if not store.exists("run.json"):
        return None
    try:
        doc = json.loads(store.read_text("run.json"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _part_size(n_images: int, workers: int, model_batch: int) -> int:
    """Images per ``map_batches`` call: about four calls per worker for small runs (load balance), at
    most :data:`MAX_PART_IMAGES` for large ones (Parquet parts of a useful size), a multiple of the model
    batch."""
    size = min(MAX_PART_IMAGES, max(1, math.ceil(n_images / (4 * workers))))
    return max(model_batch, math.ceil(size / model_batch) * model_batch)


def run_segment_ray(
    items: Sequence[InputItem],
    out: str | os.PathLike,
    *,
    segmenter_kwargs: dict[str, Any],
    settings: dict[str, Any],
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
        items: from :func:`~masklab.engine.distributed.storage.expand_sources` (local paths, http(s)
            URLs, storage URIs); local paths must be readable on every node (a shared mount).
        segmenter_kwargs: :class:`~masklab.engine.segmenter.Segmenter` arguments, given to every actor
            (a weights path in them must be readable on every node).
        settings: the resolved settings recorded in ``run.json`` and fingerprinted for resuming
            (``Segmenter.settings()`` plus output options, as the local engine records them).
        writer_kwargs: :class:`~masklab.io.formats.writer.OutputWriter` arguments besides the folder and
            model name (e.g. ``viz=["instance"]``), the same as the local engine's writer.
        save_json: keep the per-image ``<stem>.json`` files; the Parquet tables hold the same records
            and are written either way.
        address: a Ray cluster to join; None starts a local Ray with ``num_cpus`` CPUs (default: all).
        num_workers: model actors (default: one per GPU, else one per 4 CPUs).
        batch_size: images per forward pass on an actor.
        skip_existing: True: skip images in ``out``'s Parquet ledger; False: start over (earlier Parquet
            parts are deleted); None: skip when ``out/run.json`` has the same settings fingerprint.
        max_pixels: pixel cap per image (default ``$MASKLAB_MAX_PIXELS`` or 100 MP).

    Returns the local engine's :class:`~masklab.engine.batch.RunSummary`, results in input order.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, found {batch_size}")
    if is_uri(out) and not is_storage_uri(out):
        raise UsageError(f"--out must be a folder or a storage URI (s3://, gs://, file://...), found {out}")
    t_run = time.perf_counter()
    out = str(out) if is_storage_uri(out) else os.path.abspath(out)
    store = Store(out)
    settings = {**settings, "engine": "ray", "per_image_json": save_json}
    fingerprint = settings_fingerprint(settings)
    previous = _previous_run(store)
    same = previous is not None and previous.get("fingerprint") == fingerprint
    skip = same if skip_existing is None else bool(skip_existing)
    if skip:
        ledger = _read_ledger(store)
    else:  # start over: earlier parts would otherwise sit beside this run's rows as duplicates
        _clear_tables(store)
        ledger = {}
    # Written first so that a killed run still tells the rerun which settings its outputs came from.
    store.write_bytes(
        "run.json",
        _json_bytes({"complete": False, "fingerprint": fingerprint, "settings": settings, "images": len(items), "engine": "ray"}),
    )
    results: list[ImageResult | None] = [None] * len(items)
    todo: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        row = ledger.get(item.stem)
        if row is not None and row["image"] == item.source:
            counts = json.loads(row["counts"])
            results[i] = ImageResult(item, counts=counts, n_instances=row["instances"], skipped=True)
        else:
            location = item.url or os.path.abspath(item.path)  # workers do not share the driver's cwd
            todo.append({"index": i, "path": str(item.path), "location": location, "stem": item.stem, "url": item.url or ""})
    plan = None
    finished_at: list[float] = []  # when each image finished, from the start (startup vs steady rate in run.json)
    wall_start = time.time()
    if todo:
        show = (len(todo) > 1) if progress is None else progress
        with ray_session(address=address, num_cpus=num_cpus) as ray:
            plan = plan_workers(resources=ray.cluster_resources(), device=segmenter_kwargs.get("device", "auto"), num_workers=num_workers)
            part = _part_size(len(todo), plan.workers, batch_size)
            ds = ray.data.from_items(todo, **_from_items_kwargs(math.ceil(len(todo) / part)))
            remote_args: dict[str, Any] = {"num_cpus": plan.cpus}
            if plan.gpus:
                remote_args["num_gpus"] = plan.gpus
            mapped = ds.map_batches(
                _SegmentWorker,
                batch_size=part,
                batch_format="numpy",
                fn_constructor_kwargs={
                    "segmenter_kwargs": {**segmenter_kwargs, "device": plan.device},
                    "writer_kwargs": writer_kwargs or {},
                    "out": out,
                    "save_json": save_json,
                    "threads": plan.threads,
                    "model_batch": batch_size,
                    "max_pixels": max_pixels,
                },
                **remote_args,
                **actor_pool_kwargs(plan.workers),
            )
            with tqdm(total=len(todo), desc="segment (ray)", unit="img", disable=not show, file=sys.stderr) as bar:
                for row in mapped.iter_rows():
                    i = int(row["index"])
                    error = str(row["error"]) or None
                    counts = json.loads(row["counts"])
                    results[i] = ImageResult(items[i], error=error, seconds=float(row["seconds"]), counts=counts, n_instances=int(row["instances"]))
                    finished_at.append(float(row["done_at"]) - wall_start)
                    bar.update(1)
    summary = RunSummary(fingerprint=fingerprint, resumed=skip)
    summary.results = [r or ImageResult(items[i], error=f"{items[i].source}: no result came back from the Ray job") for i, r in enumerate(results)]
    summary.seconds = time.perf_counter() - t_run
    extra = {
        "engine": "ray",
        "resumed": skip,
        "batch_size": batch_size,
        "ray": {
            "version": _installed_ray_version(),
            "address": address or "local",
            "actors": None if plan is None else plan.workers,
            "cpus_each": None if plan is None else plan.cpus,
            "gpus_each": None if plan is None else plan.gpus,
            "threads_each": None if plan is None else plan.threads,
            "device": None if plan is None else plan.device,
            **_rate_timings(finished_at),
        },
        "tables": {"instances": store.path(INSTANCES_DIR), "images": store.path(IMAGES_DIR)},
    }
    _finish(store, summary, settings=settings, model_card=model_card, extra=extra, writer_kwargs=writer_kwargs or {}, save_json=save_json)
    return summary


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


def _json_bytes(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _finish(store: Store, summary: RunSummary, *, settings, model_card, extra, writer_kwargs, save_json) -> None:
    """The run-level files, as the local engine writes them: the writer's own (``OutputWriter.finish``:
    COCO, measurements CSV...), ``summary.csv`` and the final ``run.json``."""
    from masklab.io.formats.writer import OutputWriter

    stems = [r.item.stem for r in summary.results if r.ok]
    model = settings.get("model", "")
    local = store.local_dir
    if local is not None and save_json:
        OutputWriter(local, model_name=model, **writer_kwargs).finish(stems)
        write_run_files(local, summary.results, settings, seconds=summary.seconds, model_card=model_card, extra=extra)
        return
    with tempfile.TemporaryDirectory(prefix="masklab-ray-") as tmp:
        # The writer builds run-level files from per-image JSONs: give it those records, rebuilt from
        # the Parquet tables, in a local folder, and copy what it writes to the store.
        writer = OutputWriter(tmp, model_name=model, **writer_kwargs)
        written: list[Path] = []
        if set(writer.formats) != {"json"}:
            from masklab.io.atomic import atomic_write_json

            for stem, record in _records_from_tables(store, set(stems), model=model).items():
                atomic_write_json(writer.json_path(stem), record)
            written += writer.finish(stems)
        written += write_run_files(tmp, summary.results, settings, seconds=summary.seconds, model_card=model_card, extra=extra)
        for path in written:
            store.write_bytes(Path(path).relative_to(tmp).as_posix(), Path(path).read_bytes())


def _records_from_tables(store: Store, stems: set[str], *, model: str) -> dict[str, dict[str, Any]]:
    """The per-image JSON records of ``stems``, rebuilt from the Parquet tables."""
    from masklab.engine.distributed.tables import record_from_rows

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


def _installed_ray_version() -> str:
    import ray

    return ray.__version__
