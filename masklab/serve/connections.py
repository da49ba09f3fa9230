"""The HTTP connections in front of the app: uvicorn's h11 protocol with the three guards it lacks.

uvicorn (0.54) starts no timer between accepting a connection and the end of the request's headers, and
its ``limit_concurrency`` counts every open connection, idle ones included, answering 503 itself (outside
the app, so outside ``/metrics``). 200 sockets that send one byte and then nothing therefore made every
request 503, ``/healthz`` included, for as long as they stayed open. Here instead:

- **header deadline**: a connection that has not completed a request's headers within
  ``header_timeout_s`` of opening (or of its previous answer) is closed
  (``masklab_connections_closed_total{reason="header_timeout"}``);
- **idle shedding**: when more than ``max_connections`` are open, the oldest connection with no request
  in progress (waiting for headers, or idle keep-alive) is closed to make room
  (``reason="shed_idle"``); only when every connection has a request in progress does a new request get
  503 + Retry-After, counted as ``masklab_rejections_total{reason="connections"}`` with its status;
- **shutdown**: a connection whose request body is still arriving is closed at once (nothing was
  computed for it yet), so a trickling upload cannot hold shutdown for the request deadline; requests
  whose body is complete are answered first, as before.
"""

from __future__ import annotations

import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from masklab.serve.metrics import ServeMetrics

__all__ = ["guarded_protocol", "run_server"]


def guarded_protocol(*, metrics: ServeMetrics, header_timeout_s: float, max_connections: int) -> type[H11Protocol]:
    """An :class:`H11Protocol` subclass with the header deadline, idle shedding and shutdown behaviour
    described above, reporting to ``metrics``."""

    class GuardedH11Protocol(H11Protocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.limit_concurrency = None  # replaced by the shedding and the guard below
            self._inner_app, self.app = self.app, self._guard
            self._head_timer = None
            self._opened = 0.0

        # -- connection life ------------------------------------------------------------------------
        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._opened = self.loop.time()
            self._arm_head_timer()
            if len(self.connections) > max_connections:
                self._shed_oldest_idle()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)

        def handle_events(self) -> None:
            super().handle_events()
            if self.conn.their_state is not h11.IDLE:  # the request's headers are complete
                self._cancel_head_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm_head_timer()  # the next request's headers get the same deadline

        def shutdown(self) -> None:
            cycle = self.cycle
            if cycle is not None and cycle.more_body and not cycle.response_started:
                self.transport.close()  # an upload still arriving: nothing computed yet, nothing lost
                return
            super().shutdown()

        # -- the guards -----------------------------------------------------------------------------
        def _idle(self) -> bool:
            return (self.cycle is None or self.cycle.response_complete) and self.conn.their_state is h11.IDLE

        def _arm_head_timer(self) -> None:
            self._cancel_head_timer()
            self._head_timer = self.loop.call_later(header_timeout_s, self._head_timeout)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            if self._idle() and not self.transport.is_closing():
                metrics.close_connection("header_timeout")
                self.transport.close()

        def _shed_oldest_idle(self) -> None:
            idle = [c for c in self.connections if c is not self and isinstance(c, GuardedH11Protocol) and c._idle()]
            if idle:
                oldest = min(idle, key=lambda c: c._opened)
                metrics.close_connection("shed_idle")
                oldest.transport.close()

        async def _guard(self, scope, receive, send) -> None:
            busy = sum(1 for c in self.connections if not (isinstance(c, GuardedH11Protocol) and c._idle()))
            if scope["type"] != "http" or busy <= max_connections:
                await self._inner_app(scope, receive, send)
                return
            metrics.reject("connections")
            metrics.requests.labels(path=metrics.path_label(scope.get("path", "")), status="503").inc()
            body = json.dumps({"detail": f"server busy: {max_connections} connections have requests in progress "
                               "(--max-connections); retry in 2 s"}).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                       (b"retry-after", b"2"), (b"connection", b"close")]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": body})

    return GuardedH11Protocol


def run_server(app, *, host: str, port: int, root_path: str = "", forwarded_allow_ips: str | None = None,
               log_level: str = "info") -> None:
    """Serve ``app`` (from :func:`masklab.serve.create_app`) with uvicorn and the guarded protocol, using the
    connection limits of the app's :class:`~masklab.serve.ServeSettings`. Blocks until shut down."""
    import uvicorn

    svc = app.state.service
    protocol = guarded_protocol(metrics=svc.metrics, header_timeout_s=svc.settings.header_timeout_s,
                                max_connections=svc.settings.max_connections)
    uvicorn.run(app, host=host, port=port, root_path=root_path, forwarded_allow_ips=forwarded_allow_ips,
                http=protocol, timeout_keep_alive=5, log_level=log_level, server_header=False)
