"""TEMPORARY: stand-ins for the lead's issue-14 names until they land on main; removed at the merge.

- ``build_segmenter(settings)`` -> ``Segmenter(settings=settings)``
- ``model_card_for(settings)`` -> ``masklab.models.source.model_card_for``
- ``configure_threads(n)`` -> ``masklab.inference.threads.configure_threads``
"""

from __future__ import annotations

import os

from masklab.settings import InferenceSettings

__all__ = ["build_segmenter", "model_card_for", "configure_threads"]


def build_segmenter(settings: InferenceSettings):
    from masklab.engine.segmenter import Segmenter

    return Segmenter(
        settings.model,
        weights=settings.weights,
        device=settings.device,
        backend=settings.backend,
        precision=settings.precision,
        score_thresh=settings.score_thresh,
        nms_thresh=settings.nms_thresh,
        max_detections=settings.max_detections,
        min_size=settings.min_size,
        max_size=settings.max_size,
        classes=settings.classes,
        rpn_post_nms_top_n=settings.proposals,
    )


def model_card_for(settings: InferenceSettings):
    from masklab.models.card import ModelCard

    return ModelCard.from_json(build_segmenter(settings.replace(device="cpu")).spec.card())


def configure_threads(n: int | None = None) -> int:
    from masklab.engine.segmenter import configure_threads as configure

    if n is not None:
        os.environ["MASKLAB_NUM_THREADS"] = str(n)
    return configure()
