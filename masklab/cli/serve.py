"""``masklab serve``: the web service and page (FastAPI + uvicorn), bound to 127.0.0.1 by default."""

from __future__ import annotations

import argparse
import logging
import sys

from masklab.cli.options import add_model_arguments
from masklab.settings import LOW_SCORE_THRESH, InferenceSettings


def add_parser(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="run the web service and page",
        description="Serve the HTTP API (/v1/segment, /v1/render, /v1/models, /healthz, /readyz, /metrics; "
        "OpenAPI at /docs) and the upload page at /. Binds 127.0.0.1 unless --host says otherwise. "
        "--score-thresh is the lowest score the model keeps (a request's score_thresh can only raise it); "
        "--max-detections also bounds the masks' memory per worker.",
    )
    g = p.add_argument_group("network")
    g.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    g.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    g.add_argument("--root-path", default="", help="URL prefix when served under a sub-path by a reverse proxy, e.g. /masklab")
    g.add_argument("--forwarded-allow-ips", default=None, help="proxy addresses trusted for X-Forwarded-* headers (uvicorn's flag; default 127.0.0.1)")
    # --classes is per request (the query's classes=), not a server setting
    add_model_arguments(p, exclude=("classes",), defaults={"score_thresh": LOW_SCORE_THRESH})
    # scripts written before --score-thresh: the same field, hidden from --help
    p.add_argument("--min-score", dest="score_thresh", type=float, default=argparse.SUPPRESS, action=_DeprecatedAlias,
                   help=argparse.SUPPRESS)
    g = p.add_argument_group("limits")
    g.add_argument("--max-body-bytes", type=int, default=20 * 1024 * 1024, help="largest request body, counted as it streams in; larger gets 413 (default: 20 MiB)")
    g.add_argument("--max-pixels", type=int, default=24_000_000, help="largest image, width x height; larger gets 413 (default: 24 MP)")
    g.add_argument("--workers", type=int, default=None, help="images processed at once, each in its own thread (default: what the runtime takes: 1 for eager torch, which uses every core itself; OpenVINO: one per stream + 1)")
    g.add_argument("--queue-size", type=int, default=4, help="requests that may wait for a worker; more get 503 with Retry-After (default: 4)")
    g.add_argument("--request-timeout", type=float, default=60.0, help="seconds from arrival to answer, upload included; later gets 504 (default: 60)")
    g.add_argument("--cache-mb", type=int, default=256, help="memory for recent results, so re-rendering does not rerun the model (default: 256; 0 disables)")
    g.add_argument("--body-timeout", type=float, default=10.0, help="an upload is read before it queues and must keep arriving: a gap over this many seconds, or under 1 KiB/s on average after it, gets 408 (default: 10)")
    g.add_argument("--header-timeout", type=float, default=10.0, help="seconds a connection has to send a request's headers, after opening or after its previous answer; then it is closed (default: 10)")
    g.add_argument("--max-connections", type=int, default=200, help="open connections; past it the oldest idle one is closed, and only when none is idle does a request get 503 (default: 200)")
    p.set_defaults(run=run)


def run(args) -> int:
    from masklab.errors import MissingDependencyError

    try:
        from masklab.serve import ServeSettings, create_app
        from masklab.serve.connections import run_server
    except ImportError as e:
        raise MissingDependencyError(f"masklab serve needs the serve extra ({e.name} is missing): pip install 'masklab[serve]'") from None

    inference = InferenceSettings.from_args(args)
    _check_model(inference)
    settings = ServeSettings(
        inference=inference,
        max_body_bytes=args.max_body_bytes,
        max_pixels=args.max_pixels,
        workers=args.workers,
        queue_size=args.queue_size,
        request_timeout_s=args.request_timeout,
        cache_bytes=args.cache_mb * 1024 * 1024,
        body_timeout_s=args.body_timeout,
        header_timeout_s=args.header_timeout,
        max_connections=args.max_connections,
    )
    app = create_app(settings)
    log_to_stderr()
    print(f"masklab serve: http://{args.host}:{args.port}/ (model {inference.model} loading; /readyz says when ready)", file=sys.stderr)
    run_server(app, host=args.host, port=args.port, root_path=args.root_path, forwarded_allow_ips=args.forwarded_allow_ips)
    return 0


def log_to_stderr() -> logging.Handler:
    """The entry point's logging: ``masklab.*`` records at INFO and above on stderr, next to uvicorn's own
    lines (without a handler Python shows only warnings, so "model ... ready" went unseen)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
    logger = logging.getLogger("masklab")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return handler


class _DeprecatedAlias(argparse.Action):
    """Store the value under the new flag's field and say which flag replaces this one (on stderr)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"masklab serve: {option_string} is deprecated; use --score-thresh (the same setting)", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _check_model(inference: InferenceSettings) -> None:
    """Fail before the server starts on what the background load would only report via /readyz: a
    model that is neither a name nor a usable file (decided by :func:`masklab.models.source.find_source`,
    which reads at most a file's first bytes), a missing weights file, published weights that are neither
    cached nor downloadable (downloaded here, with a progress bar, when allowed)."""
    from pathlib import Path

    from masklab.errors import UsageError
    from masklab.models.source import find_source
    from masklab.models.weights import ensure_weights
    from masklab.models.zoo import get_spec

    source = find_source(inference.model, inference.weights)
    if source.name is None:  # a file or folder with its own weights
        return
    weights = source.weights
    if weights is not None and weights != "random" and not Path(weights).is_file():
        raise UsageError(f"--weights {weights}: no such file")
    spec = get_spec(source.name)
    if weights is None and spec.weights is not None:
        ensure_weights(spec.weights)
