"""``run_bench``: every case on every image in one process, then each case's numbers (see the package docstring)."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from masklab.bench.agreement import agreement
from masklab.bench.cases import BenchCase, build_case, prepare_case
from masklab.bench.cold import cli_wall, cold_start
from masklab.bench.flops import count_gflop, measure_peaks, peak_for
from masklab.bench.report import BenchReport, BenchRow, machine_info
from masklab.bench.timing import latency_stats, postprocess_cost, timed_rounds
from masklab.errors import UsageError
from masklab.inference.threads import resolve_device

__all__ = ["run_bench", "CLI_RUNS"]

#: fresh `masklab segment one.png` processes timed per case (at most ``repeat``): one run of a ~4 s model
#: varies by +-0.2 s on an idle 2-core machine, as much as the start-up being measured; the median of 3 does not
CLI_RUNS = 3


def run_bench(
    cases: Sequence[BenchCase],
    *,
    images: Sequence[np.ndarray],
    repeat: int = 3,
    cold: bool = True,
    flops: bool = True,
    peaks: bool = True,
    log: Callable[[str], None] | None = None,
) -> BenchReport:
    """Run every case on every image (RGB uint8 (H, W, 3) arrays), ``repeat`` timed runs each.

    The first case is the reference for agreement and speed-up; the report's model, weights and device
    are the first case's. A case that fails gets its error in its row and the run goes on. Every case's
    model stays loaded during the timed rounds (memory: the sum of the cases). ``cold``: also time each
    case in a fresh process; ``flops``: count GFLOP per image; ``peaks``: measure the machine's peak
    GFLOP/s (CPU only); ``log``: progress lines.
    """
    _check(cases, images, repeat)
    cases = [c.replace(device=resolve_device(c.settings.device)) for c in cases]
    say = log or (lambda msg: None)
    report = BenchReport(
        rows=[BenchRow(case=c.label, backend=c.backend, precision=c.precision) for c in cases],
        machine=machine_info(),
        settings=_run_settings(cases[0], images, repeat),
    )
    if peaks and report.settings["device"] == "cpu":
        say("measuring machine peak GFLOP/s (matmul, conv)")
        report.peaks_gflops = measure_peaks()
    say("measuring post-processing (paste + RLE, 100 detections)")
    report.postprocess = {"paste_rle_100_s": postprocess_cost(size_hw=images[0].shape[:2])}
    live = _Live(report.rows, say)
    _set_up(cases, images[0], live)
    times, outputs = timed_rounds(live.runners, images, repeat=repeat, on_error=live.fail, say=say)
    reference = outputs.get(0) if 0 in live.runners else None
    flop_cache: dict[tuple, float] = {}
    with tempfile.TemporaryDirectory(prefix="masklab-bench-") as tmp:
        image_path = _save_image(images[0], Path(tmp))
        for i, case in enumerate(cases):
            if i not in live.runners:
                continue
            seg = live.runners.pop(i)
            row = report.rows[i]
            _set(row, latency_stats(times[i]), instances=float(np.mean([len(o) for o in outputs[i]])))
            try:
                if flops:
                    _count_flops(row, case, seg, images[0], flop_cache, report.peaks_gflops)
                if reference is not None and i > 0:
                    _set(row, agreement(reference, outputs[i]))
                del seg
                gc.collect()  # this case's model goes before its fresh process starts
                if cold:
                    say(f"cold start of {case.label} (a fresh process)")
                    c = cold_start(case.settings, image_path=image_path)
                    _set(row, cold_start_s=c["total_s"], cold_import_s=c["import_s"], cold_load_s=c["load_s"],
                         peak_rss_mb=c["peak_rss_mb"])
                    if not case.baseline:
                        walls = [cli_wall(case.settings, image_path=image_path, out_dir=str(Path(tmp) / f"cli{i}-{k}"))
                                 for k in range(min(repeat, CLI_RUNS))]
                        wall = float(np.median(walls))
                        _set(row, cli_wall_s=wall, cli_wall_runs_s=walls, cold_beyond_model_s=wall - row.median_s)
            except Exception as e:  # noqa: BLE001 - one failing case is reported in its row; the others go on
                live.fail(i, e)
    base = report.rows[0].median_s
    for row in report.rows:
        if base and row.median_s:
            row.speedup = base / row.median_s
    return report


@dataclass
class _Live:
    """The cases still running (case index -> Segmenter); a failing case leaves with its error in its row."""

    rows: list[BenchRow]
    say: Callable[[str], None]
    runners: dict[int, Any] = field(default_factory=dict)

    def fail(self, i: int, e: Exception) -> None:
        self.rows[i].error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
        self.say(f"  {self.rows[i].case} failed: {self.rows[i].error}")
        self.runners.pop(i, None)


def _check(cases: Sequence[BenchCase], images: Sequence[np.ndarray], repeat: int) -> None:
    if not cases:
        raise UsageError("bench needs at least one case")
    if not images:
        raise UsageError("bench needs at least one image")
    if repeat < 1:
        raise UsageError(f"repeat must be >= 1, found {repeat}")


def _run_settings(first: BenchCase, images: Sequence[np.ndarray], repeat: int) -> dict[str, Any]:
    s = first.settings
    return {
        "model": s.model, "weights": s.weights, "device": s.device, "repeat": repeat, "images": len(images),
        "image_sizes": sorted({f"{a.shape[0]}x{a.shape[1]}" for a in images}),
    }


def _set_up(cases: list[BenchCase], image: np.ndarray, live: _Live) -> None:
    """Build and warm up every case (allocators, OpenVINO/oneDNN kernel selection) before any is timed.
    An int8 case's entry in ``cases`` is replaced by the one that runs its int8 file (:func:`prepare_case`)."""
    for i, case in enumerate(cases):
        live.say(f"setting up {case.label}")
        try:
            t0 = time.perf_counter()
            if not case.baseline and (case.precision == "int8" or case.settings.backend == "auto"):
                _prepare_elsewhere(case, image.shape[:2])  # what `masklab models --prepare` gives a user once
            case = cases[i] = prepare_case(case, size_hw=image.shape[:2], say=live.say)  # finds it now
            seg = live.runners[i] = build_case(case)
            if case.settings.backend == "auto" and getattr(seg, "eager_by_default", False):
                raise RuntimeError("the preparing process left no prepared model for this case")
            live.rows[i].setup_s = time.perf_counter() - t0  # the preparing process included
            live.rows[i].runtime = f"{seg.runtime.name} {seg.runtime.precision}"
            seg.predict([image])
        except Exception as e:  # noqa: BLE001 - one failing case is reported in its row; the others go on
            live.fail(i, e)


def _prepare_elsewhere(case: BenchCase, size_hw: tuple[int, int]) -> None:
    """Convert / calibrate what ``case`` runs in a fresh process (:mod:`masklab.bench.prepare`: why);
    quick when the cache already has it. Its messages go to this process's stderr."""
    args = [sys.executable, "-m", "masklab.bench.prepare", json.dumps(case.settings.to_json()), f"{size_hw[0]}x{size_hw[1]}"]
    proc = subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=3600)
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        err = proc.stderr.strip()
        raise RuntimeError(err.splitlines()[-1] if err else f"the preparing process exited with {proc.returncode}")


def _count_flops(row: BenchRow, case: BenchCase, seg, image: np.ndarray, cache: dict, peaks: dict[str, float]) -> None:
    """GFLOP per image, counted on the case's eager fp32 module once per set of knobs (runtimes that
    have none, such as exported files, get none), and the achieved share of the machine's peak."""
    module = seg.loaded.module
    if module is None:
        return
    key = tuple(sorted(case.settings.model_options().items()))
    if key not in cache:
        cache[key] = count_gflop(module, image)
    row.gflop = cache[key]
    if row.gflop:
        row.gflops = row.gflop / row.median_s
        peak = peak_for(case.precision, peaks)
        row.peak_share = row.gflops / peak if peak else None


def _save_image(image: np.ndarray, folder: Path) -> str:
    from PIL import Image

    path = folder / "one.png"
    Image.fromarray(image).save(path)
    return os.fspath(path)


def _set(row: BenchRow, values: dict[str, float] | None = None, **more: float) -> None:
    for k, v in {**(values or {}), **more}.items():
        setattr(row, k, v)
