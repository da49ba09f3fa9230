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

from masklab.settings import BACKENDS, DEFAULT_MODEL, PRECISIONS

__all__ = ["add_model_arguments", "GROUPS"]

#: flag groups a command may leave out with ``exclude=``
GROUPS = ("source", "runtime", "postprocess", "input", "classes", "tiling")


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
        help="runtime (default: auto = eager torch on the CPU, torch-fast on CUDA; openvino is the fastest exact "
        "CPU path; see README 'Speed')")
    add("runtime", "--precision", dest="precision", choices=PRECISIONS,
        help="fp32 is exact; bf16/fp16 are faster and change outputs slightly; int8 runs the model `masklab quantize` "
        "calibrated (default: fp32)")
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
