"""The glue between ``masklab segment --engine ray`` and :func:`~masklab.runs.ray.engine.run_segment_ray`."""

from __future__ import annotations

from typing import Any

from masklab.errors import UsageError
from masklab.runs.ledger import RunSummary, run_settings
from masklab.settings import InferenceSettings

__all__ = ["check_ray_args", "segment_on_ray"]


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


def segment_on_ray(args, items, settings: InferenceSettings, *, writer_kwargs: dict[str, Any], progress: bool | None) -> RunSummary:
    """Run ``items`` through :func:`~masklab.runs.ray.engine.run_segment_ray` with the CLI's flags.

    No model is built here: the model's card (read by ``model_card_for``) checks ``--classes`` and gives
    the defaults ``run.json`` records (``settings.to_run_json(card)`` plus the writer's output options);
    the actors build the model from ``settings``. ``writer_kwargs``: the
    :class:`~masklab.io.formats.writer.OutputWriter` options the local engine would use (each actor builds
    that writer). Returns the local engine's :class:`~masklab.runs.ledger.RunSummary`, so the CLI reports
    both engines alike.
    """
    from masklab.models.source import weights_source_for
    from masklab.runs.ray import engine

    card = engine.driver_card(settings)
    return engine.run_segment_ray(
        items,
        args.out,
        inference=settings,
        settings=run_settings(settings.to_run_json(card, weights_source=weights_source_for(settings)), writer_kwargs),
        model_card=card.to_json(),
        writer_kwargs={**writer_kwargs, "categories": card.categories},
        save_json=args.json,
        address=args.ray_address,
        num_workers=args.num_workers,
        batch_size=args.batch_size,
        skip_existing=args.skip_existing,
        max_pixels=args.max_pixels,
        progress=progress,
    )
