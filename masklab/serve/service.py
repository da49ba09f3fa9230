"""The app's state and the request path of an image, without the routes (see :mod:`masklab.serve.routes`).

Request path: readiness check -> 503 at once when workers and queue are full -> body read under the
streaming size cap, its own pace limit (408 for a stalled or trickling upload) and the deadline, holding no
place in the queue -> admission (503 when workers and queue filled meanwhile) -> a worker thread decodes with :func:`masklab.io.images.load_image`
(format sniffed from the bytes, pixel cap checked on the header before any pixel is decoded), runs the
model -> per-request filtering (in the route). The event loop never runs the model, so ``/healthz``
answers while every worker is busy. Uploaded bytes stay in memory (Starlette spools multipart parts over
1 MB to an anonymous temp file); an uploaded file name is only ever echoed, cleaned, as the JSON's
``image`` string.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from masklab.errors import ImageLoadError, UsageError
from masklab.inference import Segmenter
from masklab.inference.threads import configure_threads
from masklab.io.formats.common import NOT_CLASSES
from masklab.io.images import load_image, sniff_format
from masklab.serve.limits import WorkLimiter, paced_receive
from masklab.serve.metrics import ServeMetrics
from masklab.serve.settings import ServeSettings
from masklab.settings import InferenceSettings
from masklab.structures.instances import Instances

__all__ = ["Service", "ResultCache", "build_segmenter", "display_name", "PATHS", "NOT_CLASSES"]

log = logging.getLogger("masklab.serve")

#: The app's routes: the metrics' ``path`` label values (anything else is folded into ``other``).
PATHS = ("/", "/healthz", "/readyz", "/metrics", "/v1/models", "/v1/segment", "/v1/render", "/docs", "/openapi.json")
#: Category names that are not classes a request can ask for.


def build_segmenter(inference: InferenceSettings) -> Segmenter:
    """The server's model: a :class:`~masklab.Segmenter` running ``inference``. Torch's CPU threads
    (``inference.threads``, default every CPU this process may use) are set here, at server start-up,
    as at every entry point: the Segmenter itself leaves them alone."""
    configure_threads(inference.threads)
    return Segmenter(settings=inference)


def display_name(filename: str | None) -> str:
    """The upload's name as shown in the JSON: the last path component, printable, at most 200 chars.
    It is never used to build a path."""
    base = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable())[:200].strip()
    return base if base not in ("", ".", "..") else "upload"


class ResultCache:
    """Recent model outputs keyed by the sha256 of the uploaded bytes, bounded by total mask bytes.
    Lets the page re-render an image (another style, instances hidden) without running the model."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.used = max_bytes, 0
        self._items: OrderedDict[str, Instances] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Instances | None:
        with self._lock:
            inst = self._items.get(key)
            if inst is not None:
                self._items.move_to_end(key)
            return inst

    def put(self, key: str, inst: Instances) -> None:
        size = int(inst.masks.nbytes) + 1
        if size > self.max_bytes:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = inst
            self.used += size
            while self.used > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self.used -= int(old.masks.nbytes) + 1


class Service:
    """The app's state: the model (None until loaded and warm), the limits, the cache, the metrics.

    ``factory()`` builds the model: an object with ``predict([image]) -> [Instances]``, ``spec`` (a
    :class:`~masklab.models.zoo.ModelSpec`) and ``card`` (a :class:`~masklab.models.card.ModelCard`)."""

    def __init__(self, settings: ServeSettings, factory: Callable[[], Any]) -> None:
        self.settings, self.factory = settings, factory
        self.segmenter: Any = None
        self.error: str | None = None
        self.limiter: WorkLimiter | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # the app's, set by start()
        self.cache = ResultCache(settings.cache_bytes)
        self.metrics = ServeMetrics(paths=PATHS)

    # -- start-up -----------------------------------------------------------------------------------
    def start(self) -> None:
        """Create the work limiter (inside the running event loop) and load the model in a thread."""
        s = self.settings
        self.loop = asyncio.get_running_loop()
        self.limiter = WorkLimiter(workers=s.workers or 1, queue_size=s.queue_size, timeout_s=s.request_timeout_s,
                                   max_uploads=s.max_uploads)
        self.metrics.bind_gauges(queue_depth=lambda: self.limiter.waiting, running=lambda: self.limiter.running,
                                 uploads=lambda: self.limiter.uploading)
        threading.Thread(target=self.load, name="masklab-serve-load", daemon=True).start()

    def load(self) -> None:
        """Build the model and warm it on a small synthetic image (runs in a thread at start-up)."""
        t0 = time.monotonic()
        try:
            seg = self.factory()
            warm = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
            seg.predict([warm])
            if self.settings.workers is None and self.loop is not None:  # as many at once as the runtime takes
                self.loop.call_soon_threadsafe(self.limiter.grow, getattr(seg, "concurrency", 1))  # (OpenVINO: streams + 1)
            self.segmenter = seg
            log.info("model %s loaded and warm in %.1f s; ready (/readyz answers 200)", seg.spec.name, time.monotonic() - t0)
        except Exception as e:  # reported by /readyz; the process stays up so the error can be read
            self.error = f"{type(e).__name__}: {e}"
            log.error("model failed to load: %s", self.error)

    def require_ready(self) -> Any:
        if self.segmenter is None:
            detail = f"model failed to load: {self.error}" if self.error else "model is loading; try again shortly"
            raise HTTPException(503, detail, headers={"Retry-After": "5"})
        return self.segmenter

    # -- per request --------------------------------------------------------------------------------
    def known_classes(self) -> list[str]:
        """The class names of the loaded model, in class-id order."""
        return [c for c in self.segmenter.spec.categories if c not in NOT_CLASSES]

    def check_classes(self, classes: str | None) -> list[str] | None:
        """A request's comma-separated ``classes`` as a list (None: all); 422 for an unknown name."""
        if classes is None or not classes.strip():
            return None
        wanted = [c.strip() for c in classes.split(",") if c.strip()]
        known = self.known_classes()
        unknown = [c for c in wanted if c not in known]
        if unknown:  # quoted cut short: the reply never grows with the query
            shown = ", ".join(repr(c[:40] + ("..." if len(c) > 40 else "")) for c in unknown[:5])
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise HTTPException(422, f"unknown class names {shown}{more}; this model knows {known}")
        return wanted

    def check_tiling(self, **given: Any) -> dict | None:
        """A request's tiling query values (None where not given) as validated settings changes; 422 for a
        bad value. None when the request keeps the server's own tiling."""
        changes = {k: v for k, v in given.items() if v is not None}
        if not changes:
            return None
        try:
            checked = self.segmenter.inference.replace(**changes)
        except UsageError as e:
            raise HTTPException(422, str(e)) from None
        return {k: getattr(checked, k) for k in changes}

    async def handle(self, request: Request, job: Callable[[bytes, str], Any]) -> Any:
        """Body upload (paced, before queueing), admission and ``job(data, name)`` in a worker, all under one
        deadline."""
        limiter = self.limiter
        deadline = limiter.deadline()
        limiter.check_room()
        paced = paced_receive(request.receive, timeout_s=self.settings.body_timeout_s, deadline=deadline,
                              request_timeout_s=limiter.timeout_s)
        async with limiter.receiving():
            try:
                data, name = await read_upload(Request(request.scope, paced))
            except ClientDisconnect:  # the client left (or shutdown closed a still-arriving upload)
                raise HTTPException(400, "the client disconnected during the upload") from None
        async with limiter.admit():
            return await limiter.run(job, data, name, deadline=deadline)

    def instances_for(self, data: bytes, name: str, tiling: dict | None = None) -> tuple[np.ndarray, Instances]:
        """(image RGB uint8 (H, W, 3), Instances at the server's score floor). Runs in a worker thread.

        ``tiling``: a request's own ``tile``/``tile_overlap``/``tile_full_pass`` (validated already, see
        :meth:`request_segmenter`); results are cached per image and tiling."""
        cap = self.settings.max_pixels
        try:
            image = load_image(data, name=name, max_pixels=cap).array
        except ImageLoadError as e:
            raise image_error(data, e, cap) from None
        key = hashlib.sha256(data).hexdigest() + (json.dumps(tiling, sort_keys=True) if tiling else "")
        inst = self.cache.get(key)
        if inst is None:
            seg = self.segmenter.with_options(**tiling) if tiling else self.segmenter
            inst = seg.predict([image])[0]
            self.cache.put(key, inst)
        return image, inst


async def read_upload(request: Request) -> tuple[bytes, str]:
    """(the uploaded bytes, the name to show) from a multipart form's ``file`` field or a raw image body."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        form = await _form(request)
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise HTTPException(422, "the multipart form has no file in field 'file'")
            data, name = await upload.read(), display_name(upload.filename)
        finally:
            await form.close()
    elif ctype.startswith("image/") or ctype == "application/octet-stream":
        data, name = await request.body(), "upload"
    else:
        raise HTTPException(
            415,
            f"unsupported content type {ctype or '(none)'!r}: send multipart/form-data with the image in field "
            "'file', or the raw image bytes with an image/* content type",
        )
    if not data:
        raise HTTPException(422, "the uploaded image is empty (0 bytes)")
    return data, name


#: python-multipart's limit on one part's header line (its DEFAULT_MAX_HEADER_SIZE), in bytes.
_PART_HEADER_LIMIT = 4096 + 128


async def _form(request: Request):
    """The multipart form; a part header over python-multipart's limit (in practice a file name of
    thousands of characters) gets its own message instead of the generic "Invalid multipart data"."""
    try:
        return await request.form(max_files=1, max_fields=8)
    except HTTPException as e:
        cause = e.__cause__ or e.__context__
        while cause is not None and "header size" not in str(cause):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        raise HTTPException(400, f"a multipart part header is longer than {_PART_HEADER_LIMIT} bytes, most likely "
                            "the file name (thousands of characters): rename the file and upload it again (names are "
                            "shown cut to 200 characters anyway)") from None


def image_error(data: bytes, err: ImageLoadError, max_pixels: int) -> HTTPException:
    """The status for a refused upload: 415 when the bytes are not an allowed format at all, 413 when the
    header declares too many pixels, else 422 (corrupt, truncated...). Only the header is re-read."""
    from PIL import Image

    formats = sniff_format(data[:16])
    if formats is None:
        return HTTPException(415, f"{err} (judged from the bytes; the Content-Type header is not trusted)")
    try:
        with Image.open(io.BytesIO(data), formats=formats) as img:
            too_big = img.size[0] * img.size[1] > max_pixels
    except Image.DecompressionBombError:
        too_big = True
    except Exception:
        too_big = False
    if too_big:
        return HTTPException(413, f"{err} (the server's limit is --max-pixels {max_pixels})")
    return HTTPException(422, str(err))
