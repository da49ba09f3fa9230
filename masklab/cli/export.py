"""``masklab export --format onnx|openvino|torchscript --model M [--weights W] --out FILE``."""

from __future__ import annotations

import sys

from masklab.cli.options import add_model_arguments


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
    add_model_arguments(p, exclude=("runtime", "classes", "quality"), title="model and baked-in options (recorded in the model card)")
    p.set_defaults(run=run)


def run(args) -> int:
    from masklab.export import export_model, read_card
    from masklab.settings import InferenceSettings

    out = export_model(fmt=args.format, out=args.out, settings=InferenceSettings.from_args(args))
    card = read_card(out)
    print(f"exported {card.name} ({card.num_classes} classes) as {args.format} -> {out}", file=sys.stderr)
    return 0
