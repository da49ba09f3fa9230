"""``masklab segment INPUT... --out DIR``: per-image JSON + overlay, ``summary.csv``, ``run.json``."""

from __future__ import annotations

import sys


def add_parser(sub) -> None:
    p = sub.add_parser(
        "segment",
        help="segment images (files, folders, globs)",
        description="Segment images. Writes DIR/<name>.json and DIR/<name>.png per image, DIR/summary.csv and DIR/run.json.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="output folder")
    p.add_argument("-r", "--recursive", action="store_true", help="scan folders recursively")
    g = p.add_argument_group("model")
    g.add_argument("--model", "-m", default=None, help="model name (see `masklab models`) or weights file; default: maskrcnn_resnet50_fpn_v2")
    g.add_argument("--weights", "-w", default=None, metavar="PATH", help="local weights file (.pth/.pt/.safetensors)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    g.add_argument("--min-size", type=int, default=None, help="resize the shorter side to this many pixels (default: the model's, 800)")
    g.add_argument("--max-size", type=int, default=None, help="cap the longer side at this many pixels (default: the model's, 1333)")
    g = p.add_argument_group("filtering")
    g.add_argument("--score-thresh", type=float, default=0.5, help="minimum score, 0..1 (default: 0.5)")
    g.add_argument("--classes", default=None, help="comma-separated class names to keep, e.g. person,car")
    g = p.add_argument_group("output")
    g.add_argument("--viz", default="instance", help="overlay style, or 'none' (default: instance)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args) -> int:
    from masklab.engine.batch import run_segment
    from masklab.engine.segmenter import Segmenter
    from masklab.io.inputs import expand_inputs
    from masklab.models.zoo import DEFAULT_MODEL

    items = expand_inputs(args.inputs, recursive=args.recursive)
    if not items:
        print("masklab: no images found in the inputs", file=sys.stderr)
        return 2
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    viz = None if args.viz in ("none", "") else args.viz
    if viz is not None:
        from masklab.visualize import get_visualizer

        get_visualizer(viz)  # fail on a bad style before the model loads
    seg = Segmenter(
        args.model or DEFAULT_MODEL,
        weights=args.weights,
        device=args.device,
        score_thresh=args.score_thresh,
        classes=classes,
        min_size=args.min_size,
        max_size=args.max_size,
    )
    summary = run_segment(items, args.out, seg, viz=viz, progress=False if args.no_progress else None)
    n_ok = len(summary.results) - len(summary.failures)
    print(f"segmented {n_ok}/{len(items)} images in {summary.seconds:.1f} s -> {args.out}", file=sys.stderr)
    for r in summary.failures:
        print(f"  failed: {r.item.path}: {r.error}", file=sys.stderr)
    return summary.exit_code
