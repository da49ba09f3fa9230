"""``masklab bench``: backends, precisions and speed knobs side by side, in one process.

Every case is a :class:`~masklab.engine.segmenter.Segmenter` (so the timed path is the user's path:
image in, :class:`~masklab.structures.instances.Instances` out, masks pasted), except the
``torchvision`` baseline, which calls the torchvision module itself (``model([image])`` + mask threshold).

Per case, the table reports:

- median and p90 latency over ``repeat`` timed runs per image (after one warm-up run), images/s; the
  timed runs are interleaved (round r runs every case), so load changes on a shared machine hit all
  cases alike;
- ``GFLOP``: arithmetic per image (2 x multiply-adds, counted with ``torch.utils.flop_counter`` on the
  eager torch model with the case's options), achieved GFLOP/s, and that as a share of the measured
  machine peak (matmul/conv microbenchmark) for the case's precision;
- agreement with the first case (the fp32 reference): share of reference instances matched by an
  instance of the same class with mask IoU >= 0.9, and the largest box (px) and score deltas over the
  matched pairs;
- cold start and peak memory: a fresh Python process that imports masklab, builds the Segmenter and
  segments one image (``ru_maxrss`` of that process), unless ``cold=False``.

Measurements on a shared CPU are noisy: compare ratios within one run and repeat runs.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from masklab.errors import UsageError

__all__ = [
    "BenchCase",
    "BenchRow",
    "BenchReport",
    "parse_case",
    "default_cases",
    "generated_images",
    "match_instances",
    "measure_peaks",
    "postprocess_cost",
    "run_bench",
    "format_table",
]

_KNOBS = {"min_size": int, "max_size": int, "proposals": int, "max_detections": int, "score_thresh": float}


@dataclass(frozen=True)
class BenchCase:
    """One column of the comparison: a backend, a precision and optional knobs (None = model default)."""

    backend: str = "torch"
    precision: str = "fp32"
    min_size: int | None = None
    max_size: int | None = None
    proposals: int | None = None
    max_detections: int | None = None
    score_thresh: float | None = None

    @property
    def label(self) -> str:
        knobs = [f"{k}={getattr(self, k)}" for k in _KNOBS if getattr(self, k) is not None]
        return ":".join([self.backend, self.precision] + ([",".join(knobs)] if knobs else []))


def parse_case(text: str) -> BenchCase:
    """``backend[:precision[:knob=value,...]]``, e.g. ``openvino:bf16:min_size=480,proposals=300``."""
    parts = text.strip().split(":")
    if not parts[0] or len(parts) > 3:
        raise UsageError(f"a bench case is backend[:precision[:knob=value,...]], found {text!r}")
    case = BenchCase(backend=parts[0], precision=parts[1] if len(parts) > 1 and parts[1] else "fp32")
    if len(parts) == 3 and parts[2]:
        kw = {}
        for item in parts[2].split(","):
            key, _, value = item.partition("=")
            if key not in _KNOBS or not value:
                raise UsageError(f"unknown knob {item!r} in case {text!r}; knobs: {', '.join(_KNOBS)} (knob=value)")
            try:
                kw[key] = _KNOBS[key](value)
            except ValueError:
                raise UsageError(f"knob {key} needs a {_KNOBS[key].__name__}, found {value!r}") from None
        case = replace(case, **kw)
    return case


def default_cases() -> list[BenchCase]:
    """torchvision eager fp32 (reference), our exact paths, bf16, and one knob setting; runtimes that are
    not installed are left out."""
    import importlib.util

    cases = [BenchCase("torchvision"), BenchCase("torch"), BenchCase("torch-fast")]
    have_ov = importlib.util.find_spec("openvino") is not None
    if have_ov:
        cases.append(BenchCase("openvino"))
    if importlib.util.find_spec("onnxruntime") is not None:
        cases.append(BenchCase("onnx"))
    cases.append(BenchCase("torch-fast", "bf16"))
    if have_ov:
        cases.append(BenchCase("openvino", "bf16"))
        cases.append(BenchCase("openvino", "bf16", min_size=480, max_size=640, proposals=300))
    return cases


@dataclass
class BenchRow:
    """One case's numbers (seconds, MB, GFLOP); None where not measured."""

    case: str
    backend: str
    precision: str
    median_s: float | None = None
    p90_s: float | None = None
    images_per_s: float | None = None
    speedup: float | None = None
    setup_s: float | None = None
    cold_start_s: float | None = None
    cold_import_s: float | None = None
    cold_load_s: float | None = None
    peak_rss_mb: float | None = None
    gflop: float | None = None
    gflops: float | None = None
    peak_share: float | None = None
    matched: float | None = None
    max_box_delta: float | None = None
    max_score_delta: float | None = None
    instances: float | None = None
    error: str | None = None


@dataclass
class BenchReport:
    rows: list[BenchRow]
    machine: dict[str, Any]
    peaks_gflops: dict[str, float] = field(default_factory=dict)
    postprocess: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "rows": [asdict(r) for r in self.rows],
            "machine": self.machine,
            "peaks_gflops": self.peaks_gflops,
            "postprocess": self.postprocess,
            "settings": self.settings,
        }


def generated_images(n: int = 1, *, size_hw: tuple[int, int] = (480, 640), seed: int = 0) -> list[np.ndarray]:
    """``n`` synthetic RGB uint8 (H, W, 3) photos-like images (smooth background + solid shapes)."""
    import cv2

    rng = np.random.default_rng(seed)
    h, w = size_hw
    out = []
    for _ in range(n):
        base = rng.integers(60, 200, (4, 4, 3)).astype(np.uint8)
        img = cv2.resize(base, (w, h), interpolation=cv2.INTER_CUBIC)
        img = np.clip(img.astype(np.int16) + rng.integers(-12, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        for _ in range(6):
            color = tuple(int(c) for c in rng.integers(0, 255, 3))
            cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
            r = int(rng.integers(min(h, w) // 12, min(h, w) // 4))
            if rng.random() < 0.5:
                cv2.circle(img, (cx, cy), r, color, -1)
            else:
                cv2.rectangle(img, (cx - r, cy - r // 2), (cx + r, cy + r // 2), color, -1)
        out.append(img)
    return out


def match_instances(ref, cand, *, iou_thresh: float = 0.9) -> dict[str, float]:
    """Greedy one-to-one matching of ``ref`` to ``cand`` (two Instances of one image): same class and mask
    IoU >= ``iou_thresh``. Returns ``matched`` (count), ``n_ref``, ``max_box_delta`` (px) and
    ``max_score_delta`` over matched pairs (0 when none)."""
    from pycocotools import mask as mask_utils

    from masklab.structures.masks import encode_rle

    n_ref = len(ref)
    if n_ref == 0 or len(cand) == 0:
        return {"matched": 0, "n_ref": n_ref, "max_box_delta": 0.0, "max_score_delta": 0.0}
    iou = np.asarray(mask_utils.iou(
        [_bytes_rle(r) for r in encode_rle(ref.masks)],
        [_bytes_rle(r) for r in encode_rle(cand.masks)],
        [0] * len(cand),
    )).reshape(n_ref, len(cand))
    iou[ref.class_ids[:, None] != cand.class_ids[None, :]] = -1.0
    used = np.zeros(len(cand), bool)
    box_d, score_d, matched = 0.0, 0.0, 0
    for i in np.argsort(-ref.scores, kind="stable"):
        row = np.where(used, -1.0, iou[i])
        j = int(np.argmax(row))
        if row[j] >= iou_thresh:
            used[j] = True
            matched += 1
            box_d = max(box_d, float(np.abs(ref.boxes[i] - cand.boxes[j]).max()))
            score_d = max(score_d, float(abs(ref.scores[i] - cand.scores[j])))
    return {"matched": matched, "n_ref": n_ref, "max_box_delta": box_d, "max_score_delta": score_d}


def _bytes_rle(r: dict) -> dict:
    return {"size": r["size"], "counts": r["counts"].encode("ascii")}


def measure_peaks(*, seconds: float = 1.0, threads: int | None = None) -> dict[str, float]:
    """Sustained GFLOP/s of this machine for fp32 and bf16: the best of a 2048^3 matmul and a 3x3
    convolution (256 -> 256 channels, 64x64, channels-last) run for about ``seconds`` each."""
    import torch
    import torch.nn.functional as F

    if threads:
        torch.set_num_threads(threads)
    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(2048, 2048, dtype=dtype)
        b = torch.randn(2048, 2048, dtype=dtype)
        x = torch.randn(1, 256, 64, 64, dtype=dtype).contiguous(memory_format=torch.channels_last)
        w = torch.randn(256, 256, 3, 3, dtype=dtype).contiguous(memory_format=torch.channels_last)
        work = [
            (torch.mm, (a, b), 2 * 2048**3),
            (lambda x, w: F.conv2d(x, w, padding=1), (x, w), 2 * 256 * 256 * 9 * 64 * 64),
        ]
        best = 0.0
        with torch.inference_mode():
            for fn, fn_args, flop in work:
                fn(*fn_args)
                n, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < seconds / 2:
                    fn(*fn_args)
                    n += 1
                best = max(best, n * flop / (time.perf_counter() - t0) / 1e9)
        peaks[name] = best
    return peaks


def count_gflop(module, image: np.ndarray) -> float:
    """GFLOP (2 x multiply-adds) of one eager forward of a torchvision MaskRCNN on ``image``."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from masklab.models.backend import to_tensor_chw

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        module.eval()([to_tensor_chw(image)])
    return counter.get_total_flops() / 1e9


def postprocess_cost(*, size_hw: tuple[int, int] = (480, 640), n: int = 100, repeat: int = 3, seed: int = 0) -> float:
    """Median seconds to paste ``n`` 28x28 masks at full resolution and RLE-encode them (what every backend
    does after the network)."""
    import torch

    from masklab.structures.masks import encode_rle, paste_masks

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


class _TorchvisionBaseline:
    """torchvision eager fp32, called as its docs show: ``model([image])``, masks thresholded at 0.5."""

    name = "torchvision"

    def __init__(self, seg) -> None:
        self.seg = seg
        self.module = seg.loaded.module

    def predict(self, images):
        import torch

        from masklab.models.backend import Detections, to_tensor_chw

        with torch.inference_mode():
            outs = self.module([to_tensor_chw(im) for im in images])
        return [
            Detections(
                boxes=o["boxes"].numpy(),
                scores=o["scores"].numpy(),
                class_ids=o["labels"].numpy().astype(np.int64),
                masks=(o["masks"][:, 0] > 0.5).numpy(),
            )
            for o in outs
        ]


def _segmenter(case: BenchCase, *, model: str, weights, device: str):
    from masklab.engine.segmenter import Segmenter

    backend = "torch" if case.backend == "torchvision" else case.backend
    seg = Segmenter(
        model,
        weights=weights,
        device=device,
        score_thresh=0.5 if case.score_thresh is None else case.score_thresh,
        min_size=case.min_size,
        max_size=case.max_size,
        max_detections=case.max_detections,
        rpn_post_nms_top_n=case.proposals,
        backend=backend,
        precision=case.precision,
    )
    if case.backend == "torchvision":
        seg.backend = _TorchvisionBaseline(seg)
    return seg


_COLD_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from masklab.engine.segmenter import Segmenter
t1 = time.perf_counter()
a = json.loads(sys.argv[1])
seg = Segmenter(a["model"], weights=a["weights"], device=a["device"], score_thresh=a["score_thresh"],
                min_size=a["min_size"], max_size=a["max_size"], max_detections=a["max_detections"],
                rpn_post_nms_top_n=a["proposals"], backend=a["backend"], precision=a["precision"])
t2 = time.perf_counter()
seg(a["image"])
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_image_s": t3 - t2, "total_s": t3 - t0,
                  "peak_rss_mb": peak_rss_mb()}))
"""
# ru_maxrss is useless here: Linux carries it over fork + exec, so a child of a 4 GB bench process reports
# >= 4 GB. VmHWM belongs to the address space, which exec replaces: the child's own peak.
_COLD_CHILD = """
def peak_rss_mb():
    try:
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
""" + _COLD_CHILD


def cold_start(case: BenchCase, *, model: str, weights, device: str, image_path: str, timeout: float = 900) -> dict:
    """Import + load + first image in a fresh process (the ``masklab segment one.jpg`` path)."""
    backend = "torch" if case.backend == "torchvision" else case.backend
    args = {
        "model": model, "weights": None if weights is None else os.fspath(weights), "device": device,
        "score_thresh": 0.5 if case.score_thresh is None else case.score_thresh, "min_size": case.min_size,
        "max_size": case.max_size, "max_detections": case.max_detections, "proposals": case.proposals,
        "backend": backend, "precision": case.precision, "image": image_path,
    }
    proc = subprocess.run(
        [sys.executable, "-c", _COLD_CHILD, json.dumps(args)], capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _machine() -> dict[str, Any]:
    import platform

    import torch

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    for mod in ("openvino", "onnxruntime"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return info


def run_bench(
    cases: Sequence[BenchCase],
    *,
    images: Sequence[np.ndarray],
    model: str = "maskrcnn_resnet50_fpn_v2",
    weights: str | os.PathLike | None = "random",
    device: str = "cpu",
    repeat: int = 3,
    cold: bool = True,
    flops: bool = True,
    peaks: bool = True,
    log=None,
) -> BenchReport:
    """Run every case on every image (see the module docstring). The first case is the reference for
    agreement and speed-up; a case that fails gets its error in the row and the run goes on. Every case's
    model stays loaded during the timed rounds (memory: the sum of the cases)."""
    from masklab.engine.segmenter import resolve_device

    if not cases:
        raise UsageError("bench needs at least one case")
    if not images:
        raise UsageError("bench needs at least one image")
    if repeat < 1:
        raise UsageError(f"repeat must be >= 1, found {repeat}")
    device = resolve_device(device)
    say = log or (lambda msg: None)
    report = BenchReport(rows=[], machine=_machine(), settings={
        "model": model, "weights": None if weights is None else os.fspath(weights), "device": device,
        "repeat": repeat, "images": len(images), "image_sizes": sorted({f"{a.shape[0]}x{a.shape[1]}" for a in images}),
    })
    if peaks and device == "cpu":
        say("measuring machine peak GFLOP/s (matmul, conv)")
        report.peaks_gflops = measure_peaks()
    say("measuring post-processing (paste + RLE, 100 detections)")
    report.postprocess = {"paste_rle_100_s": postprocess_cost(size_hw=images[0].shape[:2])}
    tmp = tempfile.TemporaryDirectory(prefix="masklab-bench-")
    image_path = str(Path(tmp.name) / "one.png")
    from PIL import Image

    Image.fromarray(images[0]).save(image_path)
    flop_cache: dict[tuple, float] = {}
    live: dict[int, Any] = {}  # case index -> Segmenter, for cases that have not failed
    times: dict[int, list[float]] = {}
    outputs: dict[int, list] = {}

    def fail(i: int, e: Exception) -> None:
        report.rows[i].error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
        say(f"  {report.rows[i].case} failed: {report.rows[i].error}")
        live.pop(i, None)

    try:
        for i, case in enumerate(cases):  # 1. build and warm up every case
            report.rows.append(BenchRow(case=case.label, backend=case.backend, precision=case.precision))
            say(f"setting up {case.label}")
            try:
                t0 = time.perf_counter()
                live[i] = _segmenter(case, model=model, weights=weights, device=device)
                report.rows[i].setup_s = time.perf_counter() - t0
                live[i].predict(images[:1])  # warm-up (allocators, OpenVINO/oneDNN kernel selection)
                times[i], outputs[i] = [], []
            except Exception as e:  # noqa: BLE001 - one failing case is reported in its row; the others go on
                fail(i, e)
        # 2. timed runs, interleaved: round r runs every case once per image, so a change in the load of a
        #    shared machine hits every case alike instead of whichever case happened to be running.
        for r in range(repeat):
            say(f"round {r + 1}/{repeat}")
            for im in images:
                for i in list(live):
                    try:
                        t0 = time.perf_counter()
                        out = live[i].predict([im])[0]
                        times[i].append(time.perf_counter() - t0)
                    except Exception as e:  # noqa: BLE001
                        fail(i, e)
                        continue
                    if r == 0:
                        outputs[i].append(out)
        # 3. statistics, FLOPs, agreement with the first case; then the fresh-process cold start
        reference = outputs.get(0) if 0 in live else None
        for i, case in enumerate(cases):
            row = report.rows[i]
            if i not in live:
                continue
            seg = live.pop(i)
            row.median_s = statistics.median(times[i])
            row.p90_s = float(np.percentile(times[i], 90))
            row.images_per_s = 1.0 / row.median_s
            row.instances = float(np.mean([len(o) for o in outputs[i]]))
            try:
                if flops and seg.loaded.module is not None:  # counted on the eager fp32 module, once per options
                    key = (case.min_size, case.max_size, case.proposals, case.max_detections, case.score_thresh)
                    if key not in flop_cache:
                        flop_cache[key] = count_gflop(seg.loaded.module, images[0])
                    row.gflop = flop_cache[key]
                if row.gflop:
                    row.gflops = row.gflop / row.median_s
                    peak = report.peaks_gflops.get("bf16" if case.precision in ("bf16", "fp16") else "fp32")
                    row.peak_share = row.gflops / peak if peak else None
                if reference is not None and i > 0:
                    stats = [match_instances(a, b) for a, b in zip(reference, outputs[i])]
                    n_ref = sum(s["n_ref"] for s in stats)
                    row.matched = sum(s["matched"] for s in stats) / n_ref if n_ref else 1.0
                    row.max_box_delta = max(s["max_box_delta"] for s in stats)
                    row.max_score_delta = max(s["max_score_delta"] for s in stats)
                del seg
                gc.collect()
                if cold:
                    say(f"cold start of {case.label} (a fresh process)")
                    c = cold_start(case, model=model, weights=weights, device=device, image_path=image_path)
                    row.cold_start_s = c["total_s"]
                    row.cold_import_s, row.cold_load_s = c["import_s"], c["load_s"]
                    row.peak_rss_mb = c["peak_rss_mb"]
            except Exception as e:  # noqa: BLE001
                fail(i, e)
    finally:
        tmp.cleanup()
    base = report.rows[0].median_s
    for row in report.rows:
        if base and row.median_s:
            row.speedup = base / row.median_s
    return report


def _fmt(v, spec: str, missing: str = "-") -> str:
    return missing if v is None else format(v, spec)


def format_table(report: BenchReport) -> str:
    """The report as a Markdown table plus a few lines of context."""
    head = ("| case | median s | p90 s | img/s | vs first | GFLOP | GFLOP/s | % peak | matched | max box Δ px "
            "| max score Δ | cold start s | peak RSS MB |")
    lines = [head, "|" + "---|" * 13]
    for r in report.rows:
        if r.error:
            lines.append(f"| {r.case} | failed: {r.error} |" + " |" * 11)
            continue
        lines.append(
            "| " + " | ".join([
                r.case,
                _fmt(r.median_s, ".3f"),
                _fmt(r.p90_s, ".3f"),
                _fmt(r.images_per_s, ".2f"),
                _fmt(r.speedup, ".2f") + ("x" if r.speedup else ""),
                _fmt(r.gflop, ".0f"),
                _fmt(r.gflops, ".0f"),
                _fmt(None if r.peak_share is None else 100 * r.peak_share, ".0f"),
                "ref" if r.matched is None else f"{100 * r.matched:.1f}%",
                _fmt(r.max_box_delta, ".3g"),
                _fmt(r.max_score_delta, ".3g"),
                _fmt(r.cold_start_s, ".1f"),
                _fmt(r.peak_rss_mb, ".0f"),
            ]) + " |"
        )
    m, s = report.machine, report.settings
    lines.append("")
    lines.append(f"machine: {m.get('cpu')}, {m.get('threads')} threads, torch {m.get('torch')}"
                 + "".join(f", {k} {m[k]}" for k in ("openvino", "onnxruntime", "gpu") if k in m))
    lines.append(f"model: {s.get('model')} (weights {s.get('weights')}), {s.get('images')} image(s) "
                 f"{', '.join(s.get('image_sizes', []))}, {s.get('repeat')} timed run(s) each, device {s.get('device')}")
    if report.peaks_gflops:
        lines.append("measured peak: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in report.peaks_gflops.items()))
    if report.postprocess:
        pp = report.postprocess["paste_rle_100_s"]
        ref = report.rows[0].median_s
        share = f" ({100 * pp / ref:.1f}% of the first case's latency)" if ref else ""
        lines.append(f"post-processing (paste + RLE, 100 detections at full size): {pp * 1000:.0f} ms{share}")
    lines.append("matched: share of the first case's instances found with the same class at mask IoU >= 0.9")
    return "\n".join(lines)
