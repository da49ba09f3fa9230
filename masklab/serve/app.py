"""The FastAPI app: ``create_app(settings)`` (or ``create_app(segmenter_factory=...)`` in tests).

Endpoints (OpenAPI at ``/docs``): ``POST /v1/segment`` (the CLI's per-image JSON), ``POST /v1/render``
(overlay PNG), ``GET /v1/models``, ``/healthz``, ``/readyz``, ``/metrics`` and the page at ``/``.
The app's state and an image's path through it are in :mod:`masklab.serve.service`; the routes in
:mod:`masklab.serve.routes`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from masklab._version import __version__
from masklab.serve import routes
from masklab.serve.limits import BodySizeLimit
from masklab.serve.metrics import MetricsMiddleware
from masklab.serve.service import Service, build_segmenter, display_name
from masklab.serve.settings import ServeSettings

__all__ = ["create_app", "display_name"]


def create_app(settings: ServeSettings | None = None, *, segmenter_factory: Callable[[], Any] | None = None) -> FastAPI:
    """The web app. The model is built by ``segmenter_factory()`` (default: a :class:`~masklab.Segmenter`
    running ``settings.inference``, see :func:`~masklab.serve.service.build_segmenter`) in a thread at
    start-up, then warmed; ``/readyz`` answers 503 until then. ``segmenter_factory`` must return an object
    with ``predict([image]) -> [Instances]``, ``spec`` (a :class:`~masklab.models.zoo.ModelSpec`) and
    ``card`` (a :class:`~masklab.models.card.ModelCard`), as the Segmenter has."""
    settings = settings or ServeSettings()
    factory = segmenter_factory or (lambda: build_segmenter(settings.inference))
    svc = Service(settings, factory)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        svc.start()
        try:
            yield
        finally:
            svc.limiter.close()

    app = FastAPI(
        title="masklab",
        version=__version__,
        description="Instance segmentation (Mask R-CNN): upload an image, get its masks. Limits: "
        f"body {settings.max_body_bytes} bytes, {settings.max_pixels} pixels, {settings.workers or 'auto'} worker(s), "
        f"queue {settings.queue_size}, deadline {settings.request_timeout_s:g} s.",
        lifespan=lifespan,
    )
    app.state.service = svc
    # Outermost first: the metrics see every answer, the 413s of the body limit included.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes, on_reject=lambda: svc.metrics.reject("too_large"))
    app.add_middleware(MetricsMiddleware, metrics=svc.metrics)
    routes.add_error_handlers(app, svc)
    routes.add_page(app)
    routes.add_health_routes(app, svc)
    routes.add_model_routes(app, svc)
    routes.add_segment_routes(app, svc)
    return app
