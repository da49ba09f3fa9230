"""Cold start and peak memory: one image in a fresh process (:mod:`masklab.bench.child`)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from masklab.settings import InferenceSettings

__all__ = ["cold_start", "cli_wall"]


def cold_start(settings: InferenceSettings, *, image_path: str, timeout: float = 900) -> dict[str, float]:
    """Import + load + first image of ``image_path`` in a fresh ``python -m masklab.bench.child`` process
    (the ``masklab segment one.jpg`` path) with ``settings``. Returns ``import_s``, ``load_s``,
    ``first_image_s``, ``total_s`` (seconds) and ``peak_rss_mb`` (the child's own peak); raises
    RuntimeError with the child's last error line when it fails."""
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "masklab.bench.child", json.dumps(settings.to_json()), image_path, repr(started)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        err = proc.stderr.strip()
        raise RuntimeError(err.splitlines()[-1] if err else f"the cold-start process exited with {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cli_wall(settings: InferenceSettings, *, image_path: str, out_dir: str, timeout: float = 900) -> float:
    """Wall seconds of ``masklab segment IMAGE`` with ``settings``' model flags in a fresh process: what a
    user waits for one image (interpreter start, imports, model load, the image, writing its outputs)."""
    args = [sys.executable, "-m", "masklab", "segment", image_path, "--out", out_dir, "--model", settings.model,
            "--backend", settings.backend, "--precision", settings.precision, "--device", settings.device]
    if settings.weights:
        args += ["--weights", settings.weights]
    for name, value in settings.model_options().items():
        if value is not None:
            args += [f"--{name.replace('_', '-')}", str(value)]
    t0 = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        err = proc.stderr.strip()
        raise RuntimeError(err.splitlines()[-1] if err else f"masklab segment exited with {proc.returncode}")
    return wall
