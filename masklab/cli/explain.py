"""``masklab explain IMAGE --out DIR``: one image through the model, drawn stage by stage (8 PNGs + index.html)."""

from __future__ import annotations

from pathlib import Path

from masklab.cli.options import add_model_arguments


def add_parser(sub) -> None:
    p = sub.add_parser(
        "explain",
        help="see inside the model: each stage of Mask R-CNN drawn from one image",
        description="Run one image through the model with every stage recorded (input tensor, feature maps, "
        "anchors, RPN, RoIAlign, box head, 28x28 masks, result) and write one captioned PNG per stage plus "
        "DIR/index.html, a self-contained page. Exported runtimes cannot be looked inside: the eager torch "
        "module of the same weights is traced instead (the page says so).",
    )
    p.add_argument("image", help="an image file (or URL)")
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="folder for the PNGs and index.html")
    add_model_arguments(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from masklab.explain import explain_to
    from masklab.inference import Segmenter, configure_threads
    from masklab.settings import InferenceSettings

    configure_threads()
    seg = Segmenter(settings=InferenceSettings.from_args(args))
    result = explain_to(seg, args.image, out=Path(args.out))
    for p, path in zip(result.pictures, result.paths):
        print(f"{path}  {p.title}")
    print(f"{result.html}  (open in a browser)")
    return 0
