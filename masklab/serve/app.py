"""The FastAPI app: ``create_app(settings)`` (or ``create_app(segmenter_factory=...)`` in tests).

Endpoints (OpenAPI at ``/docs``): ``POST /v1/segment`` (the CLI's per-image JSON), ``POST /v1/render``
(overlay PNG), ``GET /v1/models``, ``/healthz``, ``/readyz``, ``/metrics`` and the page at ``/``.

Request path of an image: readiness check -> admission (503 when workers and queue are full) -> body
read under the streaming size cap and the deadline -> a worker thread decodes with
:func:`masklab.io.images.load_image` (format sniffed from the bytes, pixel cap checked on the header
before any pixel is decoded), runs the model -> per-request filtering. The
event loop never runs the model, so ``/healthz`` answers while every worker is busy. Uploaded bytes stay
in memory (Starlette spools multipart parts over 1 MB to an anonymous temp file); an uploaded file name
is only ever echoed, cleaned, as the JSON's ``image`` string.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from masklab.errors import ImageLoadError, MasklabError
from masklab.io.formats.writer import image_record
from masklab.io.images import load_image, sniff_format
from masklab.serve.limits import BodySizeLimit, DeadlineExceeded, WorkLimiter
from masklab.serve.metrics import CONTENT_TYPE, MetricsMiddleware, ServeMetrics
from masklab.serve.settings import ServeSettings
from masklab.structures.instances import Instances
from masklab.visualize import STYLES

#: The overlay styles /v1/render offers (an enum in the OpenAPI schema).
StyleName = Literal[STYLES]  # type: ignore[valid-type]

__all__ = ["create_app"]

log = logging.getLogger("masklab.serve")

_PATHS = ("/", "/healthz", "/readyz", "/metrics", "/v1/models", "/v1/segment", "/v1/render", "/docs", "/openapi.json")
_NOT_CLASSES = frozenset({"__background__", "N/A"})
_REASONS = {413: "too_large", 415: "unsupported", 422: "invalid", 503: "busy", 504: "deadline"}
_RAW_TYPES = ("image/png", "image/jpeg", "image/webp", "image/bmp", "image/gif", "image/tiff", "application/octet-stream")
_BODY_DOC = {
    "requestBody": {
        "required": True,
        "description": "The image: multipart/form-data with the file in field `file`, or the raw bytes with an "
        "image content type. The format is recognised from the bytes (JPEG, PNG, BMP, GIF, TIFF, WebP); the "
        "Content-Type header is not trusted.",
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["file"], "properties": {"file": {"type": "string", "format": "binary"}}}
            },
            **{t: {"schema": {"type": "string", "format": "binary"}} for t in _RAW_TYPES},
        },
    }
}
_ERRORS_DOC = {
    413: {"description": "body over --max-body-bytes, or image over --max-pixels"},
    415: {"description": "not an image in an allowed format (judged from the bytes), or an unsupported content type"},
    422: {"description": "corrupt image, missing `file` field, or a bad option"},
    503: {"description": "model not ready yet, or workers and queue full (see Retry-After)"},
    504: {"description": "the per-request deadline (--request-timeout) passed"},
}


def display_name(filename: str | None) -> str:
    """The upload's name as shown in the JSON: the last path component, printable, at most 200 chars.
    It is never used to build a path."""
    base = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable())[:200].strip()
    return base if base not in ("", ".", "..") else "upload"


class _ResultCache:
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


class _Service:
    """The app's state: the model (None until loaded and warm), the limits, the cache, the metrics."""

    def __init__(self, settings: ServeSettings, factory: Callable[[], Any]) -> None:
        self.settings, self.factory = settings, factory
        self.segmenter: Any = None
        self.error: str | None = None
        self.limiter: WorkLimiter | None = None
        self.cache = _ResultCache(settings.cache_bytes)
        self.metrics = ServeMetrics(paths=_PATHS)

    # -- start-up -----------------------------------------------------------------------------------
    def load(self) -> None:
        """Build the model and warm it on a small synthetic image (runs in a thread at start-up)."""
        try:
            seg = self.factory()
            warm = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
            seg.predict([warm])
            self.segmenter = seg
            log.info("model %s loaded and warm; ready", seg.spec.name)
        except Exception as e:  # reported by /readyz; the process stays up so the error can be read
            self.error = f"{type(e).__name__}: {e}"
            log.error("model failed to load: %s", self.error)

    def require_ready(self) -> Any:
        if self.segmenter is None:
            detail = f"model failed to load: {self.error}" if self.error else "model is loading; try again shortly"
            raise HTTPException(503, detail, headers={"Retry-After": "5"})
        return self.segmenter

    # -- per request --------------------------------------------------------------------------------
    def check_classes(self, classes: str | None) -> list[str] | None:
        if classes is None or not classes.strip():
            return None
        wanted = [c.strip() for c in classes.split(",") if c.strip()]
        known = [c for c in self.segmenter.spec.categories if c not in _NOT_CLASSES]
        unknown = [c for c in wanted if c not in known]
        if unknown:
            raise HTTPException(422, f"unknown class names {unknown[:10]}; this model knows {known}")
        return wanted

    async def handle(self, request: Request, job: Callable[[bytes, str], Any]) -> Any:
        """Admission, body upload and ``job(data, name)`` in a worker, all under one deadline."""
        limiter = self.limiter
        deadline = limiter.deadline()
        async with limiter.admit():
            loop = asyncio.get_running_loop()
            try:
                data, name = await asyncio.wait_for(_read_upload(request), max(deadline - loop.time(), 0.0))
            except asyncio.TimeoutError:
                raise DeadlineExceeded(limiter.timeout_s, "receiving the upload") from None
            return await limiter.run(job, data, name, deadline=deadline)

    def instances_for(self, data: bytes, name: str) -> tuple[np.ndarray, Instances]:
        """(image RGB uint8 (H, W, 3), Instances at the model's ``min_score``). Runs in a worker thread."""
        cap = self.settings.max_pixels
        try:
            image = load_image(data, name=name, max_pixels=cap).array
        except ImageLoadError as e:
            raise _image_error(data, e, cap) from None
        key = hashlib.sha256(data).hexdigest()
        inst = self.cache.get(key)
        if inst is None:
            inst = self.segmenter.predict([image])[0]
            self.cache.put(key, inst)
        return image, inst


async def _read_upload(request: Request) -> tuple[bytes, str]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=8)
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


def _image_error(data: bytes, err: ImageLoadError, max_pixels: int) -> HTTPException:
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


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def _hidden(hide: str | None) -> set[int]:
    return {int(v) for v in hide.split(",")} if hide else set()


def create_app(settings: ServeSettings | None = None, *, segmenter_factory: Callable[[], Any] | None = None) -> FastAPI:
    """The web app. The model is built by ``segmenter_factory()`` (default: a
    :class:`~masklab.engine.segmenter.Segmenter` from ``settings``) in a thread at start-up, then warmed;
    ``/readyz`` answers 503 until then. ``segmenter_factory`` must return an object with
    ``predict([image]) -> [Instances]`` and ``spec`` (a :class:`~masklab.models.zoo.ModelSpec`)."""
    from masklab.visualize import get_visualizer

    settings = settings or ServeSettings()
    if segmenter_factory is None:

        def segmenter_factory():
            from masklab.engine.segmenter import Segmenter

            return Segmenter(
                settings.model,
                weights=settings.weights,
                device=settings.device,
                score_thresh=settings.min_score,
                min_size=settings.min_size,
                max_size=settings.max_size,
                max_detections=settings.max_detections,
            )

    svc = _Service(settings, segmenter_factory)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        svc.limiter = WorkLimiter(workers=settings.workers, queue_size=settings.queue_size, timeout_s=settings.request_timeout_s)
        svc.metrics.bind_gauges(queue_depth=lambda: svc.limiter.waiting, running=lambda: svc.limiter.running)
        threading.Thread(target=svc.load, name="masklab-serve-load", daemon=True).start()
        try:
            yield
        finally:
            svc.limiter.close()

    from masklab import __version__

    app = FastAPI(
        title="masklab",
        version=__version__,
        description="Instance segmentation (Mask R-CNN): upload an image, get its masks. Limits: "
        f"body {settings.max_body_bytes} bytes, {settings.max_pixels} pixels, {settings.workers} worker(s), "
        f"queue {settings.queue_size}, deadline {settings.request_timeout_s:g} s.",
        lifespan=lifespan,
    )
    app.state.service = svc
    # Outermost first: the metrics see every answer, the 413s of the body limit included.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes, on_reject=lambda: svc.metrics.reject("too_large"))
    app.add_middleware(MetricsMiddleware, metrics=svc.metrics)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        if exc.status_code in _REASONS:
            svc.metrics.reject(_REASONS[exc.status_code])
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        svc.metrics.reject("invalid")
        return await request_validation_exception_handler(request, exc)

    @app.exception_handler(MasklabError)
    async def _masklab_error(request: Request, exc: MasklabError):
        svc.metrics.reject("invalid")
        return JSONResponse({"detail": str(exc)}, status_code=422)

    static = resources.files("masklab.serve") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(
            (static / "index.html").read_text(encoding="utf-8"),
            headers={
                "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'",
                "X-Content-Type-Options": "nosniff",
            },
        )

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: 200 once the model is loaded and warm, else 503",
             responses={503: {"description": "loading, or the model failed to load"}})
    async def readyz() -> JSONResponse:
        if svc.segmenter is not None:
            return JSONResponse({"status": "ready", "model": svc.segmenter.spec.name})
        status = "failed" if svc.error else "loading"
        return JSONResponse({"status": status, "detail": svc.error}, status_code=503, headers={"Retry-After": "5"})

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        return Response(svc.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models", summary="The model card, the styles and the limits", responses={503: _ERRORS_DOC[503]})
    async def models() -> dict:
        seg = svc.require_ready()
        return {
            "model": seg.card.to_json(),
            "classes": [c for c in seg.spec.categories if c not in _NOT_CLASSES],
            "min_score": settings.min_score,
            "styles": list(STYLES),
            "formats": ["json", "coco"],
            "limits": settings.limits(),
        }

    ScoreQ = Query(0.5, ge=0.0, le=1.0, description=f"keep instances scoring at least this (the model keeps >= {settings.min_score} anyway)")
    ClassesQ = Query(None, max_length=2000, description="comma-separated class names to keep, e.g. person,car")

    @app.post(
        "/v1/segment",
        summary="Segment an image: the CLI's per-image JSON",
        openapi_extra=_BODY_DOC,
        responses=_ERRORS_DOC,
    )
    async def segment(
        request: Request,
        score_thresh: float = ScoreQ,
        classes: str | None = ClassesQ,
        formats: list[Literal["json", "coco"]] = Query(["json"], max_length=2, description="`json`: the per-image record (always); `coco`: also a `coco` list of COCO results entries"),
    ) -> dict:
        seg = svc.require_ready()
        wanted = svc.check_classes(classes)

        def job(data: bytes, name: str) -> dict:
            _, inst = svc.instances_for(data, name)
            sel = inst.filter(min_score=score_thresh, classes=wanted)
            record = image_record(name, sel, seg.spec.name)
            if "coco" in formats:
                record["coco"] = sel.to_coco(image_id=name)
            return record

        return await svc.handle(request, job)

    @app.post(
        "/v1/render",
        summary="Render the overlay PNG of an image in a style",
        openapi_extra=_BODY_DOC,
        response_class=Response,
        responses={200: {"content": {"image/png": {}}, "description": "the overlay, RGB PNG of the image's size"}, **_ERRORS_DOC},
    )
    async def render(
        request: Request,
        style: StyleName = Query("instance", description="overlay style"),
        score_thresh: float = ScoreQ,
        classes: str | None = ClassesQ,
        hide: str | None = Query(None, max_length=20000, pattern=r"^\d{1,6}(,\d{1,6})*$", description="comma-separated instance ids (as in /v1/segment with the same options) to leave out"),
    ) -> Response:
        svc.require_ready()
        wanted = svc.check_classes(classes)
        hidden = _hidden(hide)
        visualizer = get_visualizer(style)

        def job(data: bytes, name: str) -> bytes:
            image, inst = svc.instances_for(data, name)
            sel = inst.filter(min_score=score_thresh, classes=wanted)
            sel = sel[np.array([i not in hidden for i in range(len(sel))], bool)]
            return _png(visualizer.annotate(image, sel))

        return Response(await svc.handle(request, job), media_type="image/png")

    return app
