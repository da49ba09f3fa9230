"""The Ray Data actor of :func:`~masklab.runs.ray.engine.run_segment_ray`: one model, built once; each
call segments and writes one batch of rows.

Loading, inference and per-image writing are the local engine's own steps (:mod:`masklab.runs.folder`),
so both engines fail alike and write the same files. Each call writes one Parquet part per table:
``instances/part-<id>.parquet`` first, then ``images/part-<id>.parquet`` (the ledger a rerun reads: a
stem listed there is done).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from masklab.errors import ImageLoadError
from masklab.io.formats.writer import OutputWriter, image_record
from masklab.io.images import load_image
from masklab.io.inputs import InputItem, UrlLimits, fetch_url
from masklab.runs.folder import Prepared, predict_batch, write_result
from masklab.runs.ledger import ImageResult, one_line
from masklab.runs.ray.storage import Store, is_storage_uri, read_bytes
from masklab.runs.ray.tables import IMAGES_DIR, INSTANCES_DIR, image_table, instance_table
from masklab.settings import InferenceSettings

__all__ = ["SegmentWorker", "ROW_COLUMNS"]

#: The columns of a row sent to the actors (input index, input name, where a worker opens it, output stem, URL or "").
ROW_COLUMNS = ("index", "path", "location", "stem", "url")
#: The columns each call returns, one entry per row (error "" on success, counts as JSON, done_at: wall clock).
RESULT_COLUMNS = ("index", "error", "instances", "counts", "seconds", "done_at")


class SegmentWorker:
    """A Ray Data actor: one Segmenter, built once; ``__call__`` segments and writes one batch of rows.

    Args:
        settings: ``InferenceSettings.to_json()`` for this actor (device chosen, local paths absolute).
        writer_kwargs: :class:`~masklab.io.formats.writer.OutputWriter` keywords besides folder and model name.
        out: the output folder or storage URI.
        save_json: keep the per-image JSON files.
        threads: torch CPU threads for this actor (its share of the node).
        model_batch: images per forward pass.
        max_pixels: pixel cap per image.
    """

    def __init__(
        self,
        *,
        settings: dict[str, Any],
        writer_kwargs: dict[str, Any],
        out: str,
        save_json: bool,
        threads: int,
        model_batch: int,
        max_pixels: int | None,
    ) -> None:
        from masklab import Segmenter  # here, not at import: the driver imports this module without torch
        from masklab.inference.threads import configure_threads

        configure_threads(threads)  # before torch starts its pools: this actor's share of the node, not every core
        self.segmenter = Segmenter(settings=InferenceSettings.from_json(settings))
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

    def _load(self, item: InputItem, location: str) -> Prepared:
        """A ``Prepared``: the decoded image or a one-line reason, worded as the local engine words it
        (``location``: where this worker opens a local item, its absolute path)."""
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

    def _write(self, item: InputItem, prep, inst) -> tuple[ImageResult, dict | None]:
        """The local engine's write step, then the upload; the result and, on success, the JSON record."""
        result = write_result(self.writer, item, prep.image, inst, prep.t0, False)
        if result.ok:
            try:
                self._upload(item.stem)
            except Exception as e:
                result = ImageResult(item, error=f"{item.source}: writing outputs failed ({one_line(e)})")
        return result, image_record(item.source, inst, self.model_name) if result.ok else None

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        rows = list(zip(*(batch[c].tolist() for c in ROW_COLUMNS)))
        out: dict[str, list] = {k: [] for k in RESULT_COLUMNS}
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
            outs = predict_batch(self.segmenter, [p.image for *_, p in loaded]) if loaded else []
            for (index, item, prep), inst in zip(loaded, outs):
                if isinstance(inst, str):
                    report(index, ImageResult(item, error=inst))
                    continue
                result, record = self._write(item, prep, inst)
                if record is not None:
                    finished.append((item.stem, record, result.seconds))
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
