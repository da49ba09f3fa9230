"""The app's routes, grouped by concern; each ``add_*`` function registers its routes on the app.

- :func:`add_error_handlers`: HTTP, validation and masklab errors as JSON, counted by the metrics;
- :func:`add_page`: the upload page at ``/`` and its ``/static`` files;
- :func:`add_health_routes`: ``/healthz``, ``/readyz``, ``/metrics``;
- :func:`add_model_routes`: ``GET /v1/models`` (model card, classes, styles, limits);
- :func:`add_segment_routes`: ``POST /v1/segment`` (the CLI's per-image JSON) and ``POST /v1/render``
  (overlay PNG).
"""

from __future__ import annotations

import io
from importlib import resources
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from masklab.errors import MasklabError
from masklab.io.formats.writer import image_record
from masklab.serve.metrics import CONTENT_TYPE
from masklab.serve.service import Service
from masklab.visualize import STYLES, get_visualizer

__all__ = ["add_error_handlers", "add_page", "add_health_routes", "add_model_routes", "add_segment_routes"]

#: The overlay styles /v1/render offers (an enum in the OpenAPI schema).
StyleName = Literal[STYLES]  # type: ignore[valid-type]

_REASONS = {408: "slow_upload", 413: "too_large", 415: "unsupported", 422: "invalid", 503: "busy", 504: "deadline"}
#: The longest piece of a request's own input a validation error quotes back.
_ECHO_CHARS = 80
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
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
}


def add_error_handlers(app: FastAPI, svc: Service) -> None:
    """Every refusal is counted under its reason (``masklab_rejections_total``); masklab errors are 422."""

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        if exc.status_code in _REASONS:
            svc.metrics.reject(_REASONS[exc.status_code])
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        svc.metrics.reject("invalid")
        # FastAPI quotes each bad value whole: a 15 KB query would come back as a 15 KB answer
        errors = [{**e, "input": _cut(e["input"])} if "input" in e else e for e in exc.errors()]
        return await request_validation_exception_handler(request, RequestValidationError(errors))

    @app.exception_handler(MasklabError)
    async def _masklab_error(request: Request, exc: MasklabError):
        svc.metrics.reject("invalid")
        return JSONResponse({"detail": str(exc)}, status_code=422)


def _cut(value: Any) -> Any:
    """A quoted input value, strings cut to ``_ECHO_CHARS`` (with the full length said)."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= _ECHO_CHARS:
        return value
    return f"{text[:_ECHO_CHARS]}... ({len(text)} characters)"


def add_page(app: FastAPI) -> None:
    """The upload page (``/``, with a strict Content-Security-Policy) and its files under ``/static``."""
    static = resources.files("masklab.serve") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse((static / "index.html").read_text(encoding="utf-8"), headers=_PAGE_HEADERS)


def add_health_routes(app: FastAPI, svc: Service) -> None:
    """Liveness, readiness and the Prometheus metrics; none of them waits for a worker."""

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


def model_card(seg: Any) -> dict[str, Any]:
    """The JSON model card of a loaded model (``GET /v1/models``'s ``model``; schema ``masklab-model-card/2``)."""
    return seg.card.to_json()


def add_model_routes(app: FastAPI, svc: Service) -> None:
    """``GET /v1/models``: what the loaded model is and what requests may ask of it."""

    @app.get("/v1/models", summary="The model card, the styles and the limits", responses={503: _ERRORS_DOC[503]})
    async def models() -> dict:
        seg = svc.require_ready()
        return {
            "model": model_card(seg),
            "classes": svc.known_classes(),
            "min_score": svc.settings.score_floor,
            "styles": list(STYLES),
            "formats": ["json", "coco"],
            "limits": svc.settings.limits(),
        }


def add_segment_routes(app: FastAPI, svc: Service) -> None:
    """``POST /v1/segment`` and ``POST /v1/render``: one image in, its instances filtered per request."""
    floor = svc.settings.score_floor
    tile_doc = ("tiled inference for this request (large images, small objects): SIZE or WxH pixels, or auto; "
                "default: the server's --tile")
    score_doc = (f"keep instances scoring at least this; default: the model's own threshold (0.5; 0.7 for "
                 f"matterport_r101_coco). The model keeps >= {floor} anyway")
    classes_q = Query(None, max_length=2000, description="comma-separated class names to keep, e.g. person,car")

    @app.post("/v1/segment", summary="Segment an image: the CLI's per-image JSON", openapi_extra=_BODY_DOC, responses=_ERRORS_DOC)
    async def segment(
        request: Request,
        score_thresh: float | None = Query(None, ge=0.0, le=1.0, description=score_doc),
        classes: str | None = classes_q,
        tile: str | None = Query(None, max_length=20, pattern=_TILE_PATTERN, description=tile_doc),
        tile_overlap: float | None = Query(None, ge=0.0, le=0.9, description="overlap of neighbouring tiles, a fraction of the tile"),
        formats: list[Literal["json", "coco"]] = Query(["json"], max_length=2, description="`json`: the per-image record (always); `coco`: also a `coco` list of COCO results entries"),
    ) -> dict:
        seg = svc.require_ready()
        wanted = svc.check_classes(classes)
        tiling = svc.check_tiling(tile=tile, tile_overlap=tile_overlap)

        def job(data: bytes, name: str) -> dict:
            _, inst = svc.instances_for(data, name, tiling)
            sel = inst.filter(min_score=_or_model_default(score_thresh, seg), classes=wanted)
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
        score_thresh: float | None = Query(None, ge=0.0, le=1.0, description=score_doc),
        classes: str | None = classes_q,
        tile: str | None = Query(None, max_length=20, pattern=_TILE_PATTERN, description=tile_doc),
        tile_overlap: float | None = Query(None, ge=0.0, le=0.9, description="overlap of neighbouring tiles, a fraction of the tile"),
        hide: str | None = Query(None, max_length=20000, pattern=r"^\d{1,6}(,\d{1,6})*$", description="comma-separated instance ids (as in /v1/segment with the same options) to leave out"),
    ) -> Response:
        seg = svc.require_ready()
        wanted = svc.check_classes(classes)
        tiling = svc.check_tiling(tile=tile, tile_overlap=tile_overlap)
        hidden = {int(v) for v in hide.split(",")} if hide else set()
        visualizer = get_visualizer(style)

        def job(data: bytes, name: str) -> bytes:
            image, inst = svc.instances_for(data, name, tiling)
            sel = inst.filter(min_score=_or_model_default(score_thresh, seg), classes=wanted)
            sel = sel[np.array([i not in hidden for i in range(len(sel))], bool)]
            return _png(visualizer.annotate(image, sel))

        return Response(await svc.handle(request, job), media_type="image/png")


_TILE_PATTERN = r"^(auto|\d{2,5}(x\d{2,5})?)$"


def _or_model_default(score_thresh: float | None, seg) -> float:
    """A request's threshold, or the model entry's own default (the server itself keeps a lower floor)."""
    return seg.spec.score_thresh if score_thresh is None else score_thresh


def _png(image: np.ndarray) -> bytes:
    """RGB uint8 (H, W, 3) as PNG bytes (fast compression: the page re-renders often)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()
