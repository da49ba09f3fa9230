"""The glue between ``masklab segment --engine ray`` and :func:`run_segment_ray`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from masklab.errors import UsageError

__all__ = ["check_ray_args", "segmenter_kwargs", "segment_on_ray"]


def check_ray_args(args) -> None:
    """Flags that only make sense with one engine, refused with the other before any work starts."""
    if args.engine != "ray":
        used = [f for f, v in (("--ray-address", args.ray_address), ("--num-workers", args.num_workers)) if v is not None]
        if not args.json:
            used.append("--no-json")
        if used:
            raise UsageError(f"{', '.join(used)} apply to --engine ray only")
        return
    if args.num_workers is not None and args.num_workers < 1:
        raise UsageError(f"--num-workers must be >= 1, found {args.num_workers}")
    if getattr(args, "source", None) is not None:
        raise UsageError("--source (video or camera) runs on the local engine; drop --engine ray")


def _shared_path(value: str | None) -> str | None:
    """A local file named on the command line, made absolute: Ray workers do not share our cwd."""
    if value is None or "://" in value or not Path(value).exists():
        return value
    return os.path.abspath(value)


def segmenter_kwargs(args, segmenter) -> dict[str, Any]:
    """The :class:`~masklab.engine.segmenter.Segmenter` arguments every actor builds its model with:
    the CLI's model, weights and device, and the options ``segmenter`` resolved from the flags."""
    o = segmenter.options
    kwargs = {
        "model": _shared_path(args.model) or segmenter.spec.name,
        "weights": _shared_path(args.weights),
        "device": args.device,
        "score_thresh": o.score_thresh,
        "nms_thresh": o.nms_thresh,
        "max_detections": o.max_detections,
        "min_size": o.min_size,
        "max_size": o.max_size,
        "classes": list(segmenter.classes) if segmenter.classes else None,
    }
    # Runtime choices, passed on only when set, so that the Segmenter's own defaults stay in one place.
    for key, value, default in (
        ("backend", getattr(args, "backend", None), "auto"),
        ("precision", getattr(args, "precision", None), "fp32"),
        ("rpn_post_nms_top_n", getattr(o, "rpn_post_nms_top_n", None), None),
    ):
        if value is not None and value != default:
            kwargs[key] = value
    return kwargs


def segment_on_ray(args, items, segmenter, *, writer_kwargs: dict[str, Any], settings: dict[str, Any], progress: bool | None):
    """Run ``items`` through :func:`run_segment_ray` with the CLI's flags.

    ``writer_kwargs``: the :class:`~masklab.io.formats.writer.OutputWriter` options the local engine
    would use (each actor builds that writer); ``settings``: what the local engine records in
    ``run.json``. Returns the local engine's :class:`~masklab.engine.batch.RunSummary`, so the CLI
    reports both engines alike.
    """
    from masklab.engine.distributed.ray_engine import run_segment_ray

    return run_segment_ray(
        items,
        args.out,
        segmenter_kwargs=segmenter_kwargs(args, segmenter),
        settings=settings,
        model_card=segmenter.card.to_json(),
        writer_kwargs=writer_kwargs,
        save_json=args.json,
        address=args.ray_address,
        num_workers=args.num_workers,
        batch_size=args.batch_size,
        skip_existing=args.skip_existing,
        max_pixels=args.max_pixels,
        progress=progress,
    )
