"""The bench's results: one :class:`BenchRow` per case, the :class:`BenchReport`, and its table."""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["BenchRow", "BenchReport", "machine_info", "format_table"]


@dataclass
class BenchRow:
    """One case's numbers (seconds, MB, GFLOP); None where not measured."""

    case: str
    backend: str
    precision: str
    runtime: str | None = None  # what ran: "openvino fp32" (auto, or a precision this CPU only emulates)
    median_s: float | None = None
    p90_s: float | None = None
    images_per_s: float | None = None
    speedup: float | None = None
    setup_s: float | None = None
    cold_start_s: float | None = None
    cold_import_s: float | None = None
    cold_load_s: float | None = None
    peak_rss_mb: float | None = None
    cli_wall_s: float | None = None  # `masklab segment one.png` in a fresh process, wall clock (median of the runs)
    cli_wall_runs_s: list[float] | None = None  # every such run's wall clock, in order
    cold_beyond_model_s: float | None = None  # cli_wall_s minus this case's own (warm) median latency
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
    """Every row, the machine, its measured peaks (GFLOP/s by precision), the post-processing cost
    (``paste_rle_100_s``) and the run's settings (model, weights, device, repeat, images, image_sizes)."""

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

    @classmethod
    def from_json(cls, doc: dict) -> BenchReport:
        """Inverse of :meth:`to_json` (``masklab bench --json`` output read back)."""
        return cls(
            rows=[BenchRow(**r) for r in doc["rows"]],
            machine=doc["machine"],
            peaks_gflops=doc.get("peaks_gflops", {}),
            postprocess=doc.get("postprocess", {}),
            settings=doc.get("settings", {}),
        )


def machine_info() -> dict[str, Any]:
    """CPU model and the flags that decide precision (:mod:`masklab.hardware`), torch's thread count, torch /
    Python / runtime versions, and the GPU when there is one."""
    import torch

    from masklab.hardware import cpu_features

    cpu = cpu_features()
    native = ", ".join(p for p in ("bf16", "fp16", "int8") if cpu.native(p)) or "fp32 only"
    info = {"cpu": cpu.model, "cpu_flags": " ".join(cpu.flags), "cpu_native": native,
            "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    for mod in ("openvino", "onnxruntime"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return info


def _fmt(v, spec: str, missing: str = "-") -> str:
    return missing if v is None else format(v, spec)


def _table_row(r: BenchRow) -> str:
    if r.error:
        return f"| {r.case} | failed: {r.error} |" + " |" * 13
    return "| " + " | ".join([
        r.case,
        r.runtime or "-",
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
        _fmt(r.cold_beyond_model_s, ".2f"),
        _fmt(r.peak_rss_mb, ".0f"),
    ]) + " |"


def format_table(report: BenchReport) -> str:
    """The report as a Markdown table plus a few lines of context."""
    head = ("| case | ran | median s | p90 s | img/s | vs first | GFLOP | GFLOP/s | % peak | matched | max box Δ px "
            "| max score Δ | cold start s | CLI beyond model s | peak RSS MB |")
    lines = [head, "|" + "---|" * 15] + [_table_row(r) for r in report.rows]
    m, s = report.machine, report.settings
    lines.append("")
    lines.append(f"machine: {m.get('cpu')} (flags: {m.get('cpu_flags') or '-'}; native: {m.get('cpu_native') or '-'}), "
                 f"{m.get('threads')} threads, torch {m.get('torch')}"
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
    lines.append("CLI beyond model: `masklab segment one.png` wall time in a fresh process minus the case's warm latency")
    return "\n".join(lines)
