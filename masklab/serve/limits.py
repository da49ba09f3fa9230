"""The server's limits: a streaming body-size cap (ASGI middleware) and bounded work with a deadline.

Both hold whatever the client sends: the body cap counts bytes as they arrive (a missing or lying
``Content-Length`` changes nothing), and the work limiter admits at most ``workers + queue_size``
requests; the next one is refused at once (503 + ``Retry-After``) instead of joining a backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from starlette.exceptions import HTTPException

__all__ = ["BodyTooLarge", "BodySizeLimit", "Busy", "DeadlineExceeded", "SlowUpload", "MIN_BODY_RATE", "WorkLimiter",
           "paced_receive"]

#: Bytes/s an upload must average once it has taken longer than ``body_timeout_s`` (a 20 MB body at this
#: rate takes 5.7 h: only a trickle is refused, never a slow but real connection).
MIN_BODY_RATE = 1024


class BodyTooLarge(HTTPException):
    """413: the request body went over the limit (raised from ``receive`` while the body streams in)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than the limit of {limit} bytes (--max-body-bytes)")


class Busy(HTTPException):
    """503: every worker is busy and the wait queue is full; ``Retry-After`` says when to try again."""

    def __init__(self, *, workers: int, queue_size: int, retry_after_s: int) -> None:
        super().__init__(
            503,
            f"server busy: {workers} worker(s) and a queue of {queue_size} are full; retry in {retry_after_s} s",
            headers={"Retry-After": str(retry_after_s)},
        )


class DeadlineExceeded(HTTPException):
    """504: the request did not finish within the per-request deadline (--request-timeout)."""

    def __init__(self, timeout_s: float, stage: str) -> None:
        super().__init__(504, f"request deadline of {timeout_s:g} s passed while {stage} (--request-timeout)")


class SlowUpload(HTTPException):
    """408: the request body stalled or trickled in (``--body-timeout``); counted as ``slow_upload``."""

    def __init__(self, timeout_s: float, received: int, why: str) -> None:
        super().__init__(
            408,
            f"upload too slow: {why} after {received} bytes; a body must keep arriving, with no gap over "
            f"{timeout_s:g} s and at least {MIN_BODY_RATE} bytes/s on average after the first {timeout_s:g} s "
            "(--body-timeout)",
            headers={"Connection": "close"},  # the rest of the body is still on the wire
        )


def paced_receive(receive: Callable[[], Any], *, timeout_s: float, deadline: float, request_timeout_s: float):
    """``receive`` (an ASGI receive callable) with an upload's pace enforced: each message must come within
    ``timeout_s``, and once the upload is older than ``timeout_s`` the bytes so far must average at least
    :data:`MIN_BODY_RATE` per second, else :class:`SlowUpload`; past the request's absolute ``deadline``
    (event-loop time), :class:`DeadlineExceeded`. Call only inside the running loop."""
    loop = asyncio.get_running_loop()
    start, received = loop.time(), 0

    async def paced() -> dict[str, Any]:
        nonlocal received
        left = deadline - loop.time()
        wait = min(timeout_s, left)
        try:
            message = await asyncio.wait_for(receive(), max(wait, 0.0))
        except asyncio.TimeoutError:
            if wait < timeout_s:
                raise DeadlineExceeded(request_timeout_s, "receiving the upload") from None
            raise SlowUpload(timeout_s, received, f"no bytes for {timeout_s:g} s") from None
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            elapsed = loop.time() - start
            if message.get("more_body") and elapsed > timeout_s and received < MIN_BODY_RATE * elapsed:
                raise SlowUpload(timeout_s, received, f"{received / elapsed:.0f} bytes/s over {elapsed:.0f} s")
        return message

    return paced


class BodySizeLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` with 413.

    A declared ``Content-Length`` over the limit is refused before any of the body is read; otherwise the
    bytes are counted as the app pulls them from ``receive`` (chunked uploads included), and the first
    chunk past the limit raises :class:`BodyTooLarge`, so at most ``max_bytes`` + one chunk is ever held.
    ``on_reject()`` is called once per refused request (for the metrics).
    """

    def __init__(self, app, *, max_bytes: int, on_reject: Callable[[], None] | None = None) -> None:
        self.app, self.max_bytes, self.on_reject = app, max_bytes, on_reject

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await self._respond(send, 400, f"Content-Length must be a number of bytes, found {declared[:40]!r}")
                return
            if int(declared) > self.max_bytes:
                await self._reject(send)
                return
        received = 0
        started = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            # Normally the app's exception handler already answered 413; this catches a raise outside it.
            if started:
                raise
            await self._reject(send)

    async def _reject(self, send) -> None:
        if self.on_reject is not None:
            self.on_reject()
        await self._respond(send, 413, BodyTooLarge(self.max_bytes).detail, close=True)

    @staticmethod
    async def _respond(send, status: int, detail: str, *, close: bool = False) -> None:
        body = json.dumps({"detail": detail}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if close:  # the unread body is still on the wire: do not reuse the connection
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


#: the most images the server runs at once by default (``workers=None``: the runtime's concurrency)
MAX_WORKERS = 8


class WorkLimiter:
    """At most ``workers`` jobs run (in threads, off the event loop); at most ``queue_size`` more wait.

    Use ``async with limiter.admit(): ... await limiter.run(fn, deadline=...)``. ``admit`` refuses at
    once with :class:`Busy` when ``workers + queue_size`` requests are already admitted. A request's body is
    read before it is admitted, inside ``async with limiter.receiving():`` (at most ``max_uploads`` at once,
    else :class:`Busy`), so a slow upload holds no place in the queue; :meth:`check_room` refuses a request
    before its upload when the queue is already full. ``run`` waits
    for a worker and for the job until the absolute ``deadline`` (event-loop time), else
    :class:`DeadlineExceeded`. A job past its deadline keeps its worker until it returns (a thread cannot
    be killed), so the number of running jobs never exceeds ``workers``.

    Create it inside the running event loop (the app's lifespan) and call it only from that loop.
    """

    def __init__(self, *, workers: int, queue_size: int, timeout_s: float, max_uploads: int = 32,
                 retry_after_s: int = 2) -> None:
        self.workers, self.queue_size, self.timeout_s, self.retry_after_s = workers, queue_size, timeout_s, retry_after_s
        self.max_uploads = max_uploads
        self.uploading = 0  # request bodies being received (not yet admitted)
        self.admitted = 0  # requests between admit() and their answer
        self.waiting = 0  # admitted requests waiting for a worker (the queue depth)
        self.running = 0  # jobs in worker threads
        self._slots = asyncio.Semaphore(workers)
        # threads start on demand; the semaphore is the limit (grow() raises it once the model is known)
        self._pool = ThreadPoolExecutor(max_workers=max(workers, MAX_WORKERS), thread_name_prefix="masklab-serve")

    def grow(self, workers: int) -> None:
        """Allow ``workers`` jobs at once (never fewer than now, at most :data:`MAX_WORKERS`); call it from
        the event loop (``loop.call_soon_threadsafe``)."""
        workers = min(int(workers), max(self.workers, MAX_WORKERS))
        for _ in range(workers - self.workers):
            self._slots.release()
        self.workers = max(self.workers, workers)

    def deadline(self) -> float:
        """The absolute deadline (event-loop time) of a request arriving now."""
        return asyncio.get_running_loop().time() + self.timeout_s

    def check_room(self) -> None:
        """:class:`Busy` now when workers and queue are full (before the client spends time uploading)."""
        if self.admitted >= self.workers + self.queue_size:
            raise Busy(workers=self.workers, queue_size=self.queue_size, retry_after_s=self.retry_after_s)

    @contextlib.asynccontextmanager
    async def receiving(self):
        if self.uploading >= self.max_uploads:
            raise HTTPException(503, f"server busy: {self.max_uploads} uploads in progress (max_uploads); retry in "
                                f"{self.retry_after_s} s", headers={"Retry-After": str(self.retry_after_s)})
        self.uploading += 1
        try:
            yield
        finally:
            self.uploading -= 1

    @contextlib.asynccontextmanager
    async def admit(self):
        self.check_room()
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1

    async def run(self, fn: Callable[..., Any], *args: Any, deadline: float) -> Any:
        loop = asyncio.get_running_loop()
        self.waiting += 1
        try:
            await asyncio.wait_for(self._slots.acquire(), max(deadline - loop.time(), 0.0))
        except asyncio.TimeoutError:
            raise DeadlineExceeded(self.timeout_s, "waiting for a worker") from None
        finally:
            self.waiting -= 1
        self.running += 1
        future = loop.run_in_executor(self._pool, fn, *args)

        def _release(_):
            self.running -= 1
            self._slots.release()

        future.add_done_callback(_release)
        try:
            return await asyncio.wait_for(asyncio.shield(future), max(deadline - loop.time(), 0.0))
        except asyncio.TimeoutError:
            raise DeadlineExceeded(self.timeout_s, "the model was working") from None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
