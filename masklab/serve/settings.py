"""`ServeSettings`: the model and the limits of one ``masklab serve`` process (one plain dataclass)."""

from __future__ import annotations

from dataclasses import dataclass

from masklab.errors import UsageError

__all__ = ["ServeSettings"]


@dataclass(frozen=True)
class ServeSettings:
    """What the server loads and the limits it enforces.

    Model: ``model`` (a zoo name or a weights file), ``weights`` (local file or None = published),
    ``device``, ``min_score`` (the lowest score the model keeps, in [0, 1]; a request can raise it, never
    lower it), ``min_size``/``max_size`` (input resize in pixels, None = the model's), ``max_detections`` per image
    (None = the model's, 100).

    Limits: ``max_body_bytes`` (request body, counted while it streams in), ``max_pixels`` (decoded
    image width x height), ``workers`` (images processed at once), ``queue_size`` (requests that may wait
    for a worker; more get 503 + Retry-After), ``request_timeout_s`` (deadline from arrival to answer,
    body upload included), ``cache_bytes`` (memory for recent results, so re-rendering an uploaded image
    in another style does not run the model again; 0 disables).

    Memory: each worker holds one image's masks, bool (N, H, W): up to ``max_detections x max_pixels``
    bytes (100 x 24 MP = 2.4 GB at the defaults; a 12 MP photo with 30 objects needs 360 MB).
    """

    model: str = "maskrcnn_resnet50_fpn_v2"
    weights: str | None = None
    device: str = "auto"
    min_score: float = 0.05
    min_size: int | None = None
    max_size: int | None = None
    max_detections: int | None = None
    max_body_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 24_000_000
    workers: int = 1
    queue_size: int = 4
    request_timeout_s: float = 60.0
    cache_bytes: int = 256 * 1024 * 1024

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_score <= 1.0:
            raise UsageError(f"min_score must be in [0, 1], found {self.min_score}")
        for name in ("max_body_bytes", "max_pixels", "workers"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be at least 1, found {getattr(self, name)}")
        for name in ("queue_size", "cache_bytes"):
            if getattr(self, name) < 0:
                raise UsageError(f"{name} must be 0 or more, found {getattr(self, name)}")
        if not self.request_timeout_s > 0:
            raise UsageError(f"request_timeout_s must be > 0, found {self.request_timeout_s}")

    def limits(self) -> dict:
        """The limits as JSON-ready values (shown by ``GET /v1/models``)."""
        return {
            "max_body_bytes": self.max_body_bytes,
            "max_pixels": self.max_pixels,
            "workers": self.workers,
            "queue_size": self.queue_size,
            "request_timeout_s": self.request_timeout_s,
        }
