"""Latency: interleaved timed rounds over every case, their median / p90, and the post-processing cost.

The timed runs are interleaved (round r runs every case once per image), so a change in the load of a
shared machine hits every case alike instead of whichever case happened to be running.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, MutableMapping, Sequence
from typing import Any

import numpy as np

from masklab.structures.masks import encode_rle, paste_masks

__all__ = ["timed_rounds", "latency_stats", "postprocess_cost"]


def timed_rounds(
    runners: MutableMapping[int, Any],
    images: Sequence[np.ndarray],
    *,
    repeat: int,
    on_error: Callable[[int, Exception], None],
    say: Callable[[str], None] = lambda msg: None,
) -> tuple[dict[int, list[float]], dict[int, list]]:
    """Run ``runners[i].predict([image])`` for every image, ``repeat`` rounds, cases interleaved.

    ``runners``: case index -> anything with ``predict(images) -> list[Instances]``; a runner that raises
    is reported through ``on_error(i, error)``, which removes it from ``runners`` (the others go on).
    Returns seconds per run (case index -> ``repeat * len(images)`` floats) and the first round's
    outputs (case index -> one Instances per image).
    """
    times: dict[int, list[float]] = {i: [] for i in runners}
    outputs: dict[int, list] = {i: [] for i in runners}
    for r in range(repeat):
        say(f"round {r + 1}/{repeat}")
        for im in images:
            for i in list(runners):
                try:
                    t0 = time.perf_counter()
                    out = runners[i].predict([im])[0]
                    times[i].append(time.perf_counter() - t0)
                except Exception as e:  # noqa: BLE001 - one failing case is reported in its row; the others go on
                    on_error(i, e)
                    continue
                if r == 0:
                    outputs[i].append(out)
    return times, outputs


def latency_stats(times: Sequence[float]) -> dict[str, float]:
    """``median_s``, ``p90_s`` and ``images_per_s`` (1 / median) of per-image seconds."""
    median = statistics.median(times)
    return {"median_s": median, "p90_s": float(np.percentile(times, 90)), "images_per_s": 1.0 / median}


def postprocess_cost(*, size_hw: tuple[int, int] = (480, 640), n: int = 100, repeat: int = 3, seed: int = 0) -> float:
    """Median seconds to paste ``n`` 28x28 masks at full resolution (``size_hw``) and RLE-encode them
    (what every backend does after the network)."""
    import torch

    rng = np.random.default_rng(seed)
    h, w = size_hw
    xy = rng.random((n, 2)) * [w * 0.8, h * 0.8]
    wh = rng.random((n, 2)) * [w * 0.5, h * 0.5] + 8
    boxes = torch.tensor(np.concatenate([xy, np.minimum(xy + wh, [w, h])], 1), dtype=torch.float32)
    probs = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        encode_rle(paste_masks(probs, boxes, size_hw))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
