"""`ServeSettings`: the model and the limits of one ``masklab serve`` process (one plain dataclass).

The model is an :class:`~masklab.settings.InferenceSettings`, embedded as it is; this class declares
only what belongs to the server: its limits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from masklab.errors import UsageError
from masklab.settings import LOW_SCORE_THRESH, InferenceSettings

__all__ = ["ServeSettings"]


@dataclass(frozen=True, kw_only=True)
class ServeSettings:
    """What the server loads and the limits it enforces.

    Model: ``inference``, the :class:`~masklab.settings.InferenceSettings` the model runs with. Its
    ``score_thresh`` is the server's floor: the lowest score the model keeps, in [0, 1]; a request can
    raise it, never lower it. When it is None (not given) the server keeps
    :data:`masklab.settings.LOW_SCORE_THRESH` (0.05), so requests can choose any threshold above that.

    Limits: ``max_body_bytes`` (request body, counted while it streams in), ``max_pixels`` (decoded
    image width x height), ``workers`` (images processed at once; None: as many as the model's runtime
    runs usefully at once, known once it has loaded: 1 for eager torch, which uses every core itself; an
    OpenVINO request per stream + 1, so decoding and mask pasting overlap inference), ``queue_size`` (requests that may wait
    for a worker; more get 503 + Retry-After), ``request_timeout_s`` (deadline from arrival to answer,
    body upload included), ``body_timeout_s`` (an upload is read before it queues for a worker, and must
    keep arriving: a gap longer than this, or under :data:`~masklab.serve.limits.MIN_BODY_RATE` bytes/s on
    average after this long, gets 408), ``max_uploads`` (bodies received at once; more get 503),
    ``header_timeout_s`` (a connection must complete a request's headers this soon after opening or after
    its previous answer, else it is closed), ``max_connections`` (open connections; past it the oldest idle
    one is closed, and when none is idle a request gets 503), ``cache_bytes`` (memory for recent results, so re-rendering an uploaded image
    in another style does not run the model again; 0 disables).

    Memory: each worker holds one image's masks, bool (N, H, W): up to ``inference.max_detections x
    max_pixels`` bytes (100 x 24 MP = 2.4 GB at the defaults; a 12 MP photo with 30 objects needs 360 MB).
    """

    inference: InferenceSettings = field(default_factory=InferenceSettings)
    max_body_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 24_000_000
    workers: int | None = None
    queue_size: int = 4
    request_timeout_s: float = 60.0
    body_timeout_s: float = 10.0
    max_uploads: int = 32
    header_timeout_s: float = 10.0
    max_connections: int = 200
    cache_bytes: int = 256 * 1024 * 1024

    def __post_init__(self) -> None:
        if not isinstance(self.inference, InferenceSettings):
            raise UsageError(f"inference must be an InferenceSettings, found {type(self.inference).__name__}")
        if self.inference.score_thresh is None:  # the one place the server's floor is defaulted
            object.__setattr__(self, "inference", self.inference.replace(score_thresh=LOW_SCORE_THRESH))
        for name in ("max_body_bytes", "max_pixels", "workers", "max_uploads", "max_connections"):
            if name == "workers" and self.workers is None:
                continue
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be at least 1, found {getattr(self, name)}")
        for name in ("queue_size", "cache_bytes"):
            if getattr(self, name) < 0:
                raise UsageError(f"{name} must be 0 or more, found {getattr(self, name)}")
        for name in ("request_timeout_s", "body_timeout_s", "header_timeout_s"):
            if not getattr(self, name) > 0:
                raise UsageError(f"{name} must be > 0 seconds, found {getattr(self, name)}")

    @property
    def score_floor(self) -> float:
        """The lowest score the model keeps, in [0, 1] (``inference.score_thresh``, never None here)."""
        return float(self.inference.score_thresh)  # type: ignore[arg-type]  # filled in __post_init__

    def limits(self) -> dict[str, Any]:
        """The limits as JSON-ready values (shown by ``GET /v1/models``)."""
        return {
            "max_body_bytes": self.max_body_bytes,
            "max_pixels": self.max_pixels,
            "workers": self.workers,
            "queue_size": self.queue_size,
            "request_timeout_s": self.request_timeout_s,
            "body_timeout_s": self.body_timeout_s,
            "max_uploads": self.max_uploads,
            "header_timeout_s": self.header_timeout_s,
            "max_connections": self.max_connections,
        }
