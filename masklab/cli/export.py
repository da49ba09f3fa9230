"""``masklab export --format onnx|openvino|torchscript --model M [--weights W] --out FILE``."""

from __future__ import annotations

import sys


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export a model to ONNX, OpenVINO IR or TorchScript",
        description="Export the model's tensor core (any image size; boxes, scores, labels, 28x28 mask "
        "probabilities; masks are pasted by masklab when the file runs) with its model card inside. "
        "Run it with `masklab segment --model FILE` or Segmenter(FILE).",
    )
    p.add_argument("--format", "-f", required=True, choices=("onnx", "openvino", "torchscript"), help="output format")
    p.add_argument("--out", "-o", required=True, metavar="FILE", help="output file: .onnx, .xml (+ .bin) or .pt")
    g = p.add_argument_group("model")
    g.add_argument("--model", "-m", default=None, help="model name or weights file (default: maskrcnn_resnet50_fpn_v2)")
    g.add_argument("--weights", "-w", default=None, metavar="PATH", help="local weights file (or 'random' for tests)")
    g = p.add_argument_group("baked-in options (recorded in the model card)")
    g.add_argument("--score-thresh", type=float, default=0.5, help="lowest score the file can return (default: 0.5)")
    g.add_argument("--max-detections", type=int, default=None, help="detections per image (default: the model's, 100)")
    g.add_argument("--min-size", type=int, default=None, help="resize the shorter side to this (default: the model's)")
    g.add_argument("--max-size", type=int, default=None, help="cap the longer side at this (default: the model's)")
    g.add_argument("--proposals", type=int, default=None, help="proposals kept before the box head (default: 1000)")
    p.set_defaults(run=run)


def run(args) -> int:
    from masklab.export import export_model, read_card
    from masklab.models.loading import ModelOptions
    from masklab.models.zoo import DEFAULT_MODEL

    opts = ModelOptions(
        score_thresh=args.score_thresh,
        max_detections=args.max_detections,
        min_size=args.min_size,
        max_size=args.max_size,
        rpn_post_nms_top_n=args.proposals,
    )
    out = export_model(args.model or DEFAULT_MODEL, fmt=args.format, out=args.out, weights=args.weights, options=opts)
    card = read_card(out)
    print(f"exported {card['name']} ({card['num_classes']} classes) as {args.format} -> {out}", file=sys.stderr)
    return 0
