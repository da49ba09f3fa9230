"""Segment a list of images into an output folder: per-image JSON + overlay, ``summary.csv``, ``run.json``.

A file that fails (unreadable, corrupt, too large) is recorded with its reason and skipped; the run
goes on. Every output is written atomically.
"""

from __future__ import annotations

import csv
import io
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from masklab.errors import ImageLoadError
from masklab.io.atomic import atomic_write_json, atomic_write_text
from masklab.io.formats.writer import OutputWriter, image_record
from masklab.io.images import load_image
from masklab.io.inputs import InputItem
from masklab.structures.instances import Instances

__all__ = ["ImageResult", "RunSummary", "image_record", "run_segment"]


@dataclass
class ImageResult:
    """What happened to one input: ``instances`` on success, ``error`` (one line) on failure."""

    item: InputItem
    instances: Instances | None = None
    error: str | None = None
    seconds: float = 0.0


@dataclass
class RunSummary:
    results: list[ImageResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failures(self) -> list[ImageResult]:
        return [r for r in self.results if r.error is not None]

    @property
    def exit_code(self) -> int:
        """0 when every input succeeded, 1 when some failed."""
        return 1 if self.failures else 0


def _versions() -> dict[str, str]:
    import numpy
    import torch
    import torchvision

    from masklab import __version__

    return {
        "masklab": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
    }


def _write_summary_csv(path: Path, results: Sequence[ImageResult]) -> None:
    classes: list[str] = []
    for r in results:
        if r.instances is not None:
            for lab in r.instances.labels:
                if lab not in classes:
                    classes.append(lab)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["image", "status", "instances", *classes, "error"])
    for r in results:
        if r.instances is None:
            w.writerow([str(r.item.path), "failed", "", *([""] * len(classes)), r.error])
        else:
            counts = r.instances.counts()
            w.writerow([str(r.item.path), "ok", len(r.instances), *(counts.get(c, 0) for c in classes), ""])
    atomic_write_text(path, buf.getvalue())


def run_segment(
    items: Sequence[InputItem],
    out_dir: str | Path,
    segmenter,
    *,
    viz: str | None = "instance",
    progress: bool | None = None,
    extra_settings: dict | None = None,
) -> RunSummary:
    """Segment ``items`` with ``segmenter``; write ``<stem>.json`` (+ ``<stem>.png`` overlay unless
    ``viz`` is None) per image and ``summary.csv``/``run.json`` for the run."""
    from tqdm.auto import tqdm

    out = Path(out_dir)
    writer = OutputWriter(out, model_name=segmenter.spec.name, viz=[viz] if viz else [])
    summary = RunSummary()
    t_run = time.perf_counter()
    show = (len(items) > 1) if progress is None else progress
    for item in tqdm(items, desc="segment", unit="img", disable=not show, file=sys.stderr):
        t0 = time.perf_counter()
        try:
            image = load_image(item.path)
        except ImageLoadError as e:
            summary.results.append(ImageResult(item, error=str(e).splitlines()[0]))
            continue
        inst = segmenter.predict([image])[0]
        writer.write(stem=item.stem, image_name=str(item.path), image=image.array, instances=inst)
        summary.results.append(ImageResult(item, inst, seconds=time.perf_counter() - t0))
    summary.seconds = time.perf_counter() - t_run
    ok = [r for r in summary.results if r.error is None]
    writer.finish([r.item.stem for r in ok])
    _write_summary_csv(out / "summary.csv", summary.results)
    atomic_write_json(
        out / "run.json",
        {
            "settings": {**segmenter.settings(), "viz": viz, **(extra_settings or {})},
            "model_card": segmenter.spec.card(),
            "versions": _versions(),
            "images": len(items),
            "succeeded": len(ok),
            "failed": [{"image": str(r.item.path), "error": r.error} for r in summary.failures],
            "timings": {
                "total_s": round(summary.seconds, 3),
                "per_image_s": [round(r.seconds, 3) for r in ok],
                "images_per_s": round(len(ok) / summary.seconds, 4) if summary.seconds > 0 else None,
            },
        },
        indent=2,
    )
    return summary
