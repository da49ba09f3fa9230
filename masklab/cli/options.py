"""The model flags every command shares, declared once: :func:`add_model_arguments`.

Each flag's ``dest`` is the :class:`~masklab.settings.InferenceSettings` field of the same name and its
argparse default is None, so :meth:`InferenceSettings.from_args` leaves the settings object's own
defaults (and the model card's) in force. A command that defaults an option differently (``eval`` keeps
scores down to 0.05 for COCO metrics) says so through ``defaults``, which only changes the help text
and the value :meth:`InferenceSettings.from_args` receives.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from typing import Any

from masklab.errors import ImageLoadError, UsageError, WeightsMismatchError, WeightsUnavailableError
from masklab.settings import BACKENDS, DEFAULT_MODEL, PRECISIONS, REFINE_METHODS

__all__ = ["add_model_arguments", "GROUPS", "EXIT_CODES", "exit_codes_help", "HelpFormatter"]

#: What ``masklab`` exits with (the codes come from :mod:`masklab.errors`, so the table cannot drift).
EXIT_CODES = (
    (0, "success: every input was done"),
    (ImageLoadError.exit_code, "some inputs failed; the run finished (each failure is in summary.csv and run.json)"),
    (UsageError.exit_code, "usage error: a bad flag, an unknown model or class name, no inputs, a malformed "
     "dataset, a missing optional dependency"),
    (WeightsUnavailableError.exit_code, "model weights unavailable: not cached and no download (offline?); "
     "--model shapes_demo runs offline"),
    (WeightsMismatchError.exit_code, "the weights do not fit the model (another architecture or class count), "
     "or the file is not weights"),
    (130, "interrupted (Ctrl-C)"),
)


def exit_codes_help() -> str:
    """The exit-code table as ``--help`` prints it (kept as lines by :class:`HelpFormatter`)."""
    return "exit codes:\n" + "\n".join(f"  {code:<3d} {text}" for code, text in EXIT_CODES)


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, except that the exit-code table keeps its lines."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("exit codes:"):
            return "\n".join(indent + line for line in text.splitlines())
        return super()._fill_text(text, width, indent)

#: flag groups a command may leave out with ``exclude=``
GROUPS = ("source", "runtime", "postprocess", "input", "classes", "tiling", "quality")


def add_model_arguments(
    parser: argparse.ArgumentParser,
    *,
    exclude: Iterable[str] = (),
    defaults: Mapping[str, Any] | None = None,
    helps: Mapping[str, str] | None = None,
    title: str = "model",
) -> None:
    """Add ``--model --weights --device --backend --precision --score-thresh --nms-thresh
    --max-detections --proposals --min-size --max-size --classes`` to ``parser``.

    ``exclude``: group names from :data:`GROUPS` (or single field names) the command does not take;
    ``defaults``: per-command defaults, e.g. ``{"score_thresh": 0.05}``; ``helps``: per-command help
    texts by field name, where the command gives a flag a meaning of its own.
    """
    skip = set(exclude)
    d = dict(defaults or {})
    g = parser.add_argument_group(title)

    def add(group: str, *flags: str, dest: str, **kw: Any) -> None:
        if group in skip or dest in skip:
            return
        if helps and dest in helps:
            kw["help"] = helps[dest]
        g.add_argument(*flags, dest=dest, default=d.get(dest), **kw)

    add("source", "--model", "-m", dest="model",
        help=f"model name (see `masklab models`), weights file, exported file, .h5 or training run folder (default: {DEFAULT_MODEL})")
    add("source", "--weights", "-w", dest="weights", metavar="PATH",
        help="local weights file (.pth/.pt/.safetensors/.h5) for a model name; default: its published weights")
    add("runtime", "--device", dest="device", help=f"auto | cpu | cuda[:N] (default: {d.get('device', 'auto')})")
    add("runtime", "--backend", dest="backend", choices=BACKENDS,
        help="runtime (default: auto = the fastest exact path: OpenVINO on the CPU once the model is prepared "
        "(`masklab models --prepare`), else eager torch; torch-fast on CUDA; see README 'Speed')")
    add("runtime", "--precision", dest="precision", choices=PRECISIONS,
        help="fp32 is exact (default); bf16/fp16 are faster only on CPUs that have them natively (elsewhere "
        "masklab warns and runs fp32); int8 runs a model made by `masklab quantize`")
    add("runtime", "--strict-precision", dest="strict_precision", action="store_const", const=True,
        help="refuse a reduced precision this CPU only emulates, instead of falling back to fp32")
    score_default = d.get("score_thresh")
    add("postprocess", "--score-thresh", dest="score_thresh", type=float, metavar="S",
        help="minimum score, 0..1 (default: "
        + (f"{score_default}" if score_default is not None else "the model's, 0.5; 0.7 for matterport_r101_coco") + ")")
    add("postprocess", "--nms-thresh", dest="nms_thresh", type=float, metavar="IOU",
        help="per-class NMS IoU, 0..1 (default: the model's, 0.5; 0.3 for matterport_r101_coco)")
    add("postprocess", "--max-detections", dest="max_detections", type=int, metavar="N",
        help="keep at most this many objects per image (default: the model's, 100)")
    add("postprocess", "--proposals", dest="proposals", type=int, metavar="N",
        help="proposals kept before the box head (speed knob; default: the model's, 1000)")
    add("input", "--min-size", dest="min_size", type=int, metavar="PX",
        help="resize the shorter side to this many pixels (default: the model's, 800)")
    add("input", "--max-size", dest="max_size", type=int, metavar="PX",
        help="cap the longer side at this many pixels (default: the model's, 1333)")
    add("classes", "--classes", dest="classes", metavar="NAMES",
        help="comma-separated class names to keep, e.g. person,car (default: all)")
    if "tiling" not in skip:
        _add_tiling(parser, d)
    if "quality" not in skip:
        _add_quality(parser, d)


def _add_quality(parser: argparse.ArgumentParser, d: Mapping[str, Any]) -> None:
    """``--min-quality --refine --sam-checkpoint`` (README, "Mask quality")."""
    g = parser.add_argument_group("mask quality")
    g.add_argument("--min-quality", dest="min_quality", type=float, default=d.get("min_quality"), metavar="Q",
                   help="keep objects whose mask quality (0..1, the `quality` of every output) is at least Q "
                   "(default: keep all)")
    g.add_argument("--refine", dest="refine", choices=REFINE_METHODS, default=d.get("refine"),
                   help="mask refinement: guided = snap outlines to image edges inside each box (no extra model), "
                   "sam = segment-anything prompted with each box (needs --sam-checkpoint); default: none")
    g.add_argument("--sam-checkpoint", dest="sam_checkpoint", default=d.get("sam_checkpoint"), metavar="PTH",
                   help="a segment-anything checkpoint for --refine sam (sam_vit_b_01ec64.pth ...; not downloaded)")


def _add_tiling(parser: argparse.ArgumentParser, d: Mapping[str, Any]) -> None:
    """``--tile --tile-overlap --tile-full-pass`` (README, "Large images, small objects")."""
    g = parser.add_argument_group("tiling (large images, small objects)")
    g.add_argument("--tile", dest="tile", default=d.get("tile"), metavar="SIZE|WxH|auto",
                   help="run the model on overlapping tiles of SIZE (or WxH) original-image pixels and merge the "
                   "detections across tile borders; auto: from the model's input size (no tiling when the image is "
                   "not larger); default: off")
    g.add_argument("--tile-overlap", dest="tile_overlap", type=float, default=d.get("tile_overlap"), metavar="F",
                   help="overlap of neighbouring tiles, a fraction of the tile in [0, 0.9] (default: 0.2)")
    g.add_argument("--tile-full-pass", dest="tile_full_pass", action="store_true", default=d.get("tile_full_pass"),
                   help="also run the whole image once and merge it with the tiles, so objects larger than a tile "
                   "survive (off by default: on a huge image a small-object model mostly adds false detections)")
