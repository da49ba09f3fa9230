"""``masklab bench``: compare backends, precisions and speed knobs in one process; prints a table."""

from __future__ import annotations

import json
import sys

from masklab.cli.options import add_model_arguments

#: the model flags bench does not take: each case names its own backend, precision and knobs
_NOT_TAKEN = ("backend", "precision", "postprocess", "input", "classes", "quality")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="time backends/precisions/knobs side by side (latency, GFLOP/s, memory, agreement)",
        description="Run each case on the same images in one process and print a table: median/p90 latency, "
        "images/s, speed-up over the first case, GFLOP and achieved GFLOP/s against the measured machine peak, "
        "agreement with the first case (share of its instances matched at mask IoU >= 0.9, same class; box and "
        "score deltas), cold start and peak memory of a fresh one-image process. The CPU may be shared: "
        "compare ratios within one run. A model name without --weights runs on seeded random weights "
        "(--weights default: its published weights).",
    )
    p.add_argument("inputs", nargs="*", metavar="IMAGE", help="images to time on (default: generated ones)")
    p.add_argument(
        "--case",
        "-c",
        action="append",
        default=None,
        metavar="BACKEND[:PRECISION[:KNOB=V,...]]",
        help="a case, repeatable; the first is the reference. Backends: torchvision (baseline), torch, torch-fast, "
        "openvino, onnx, torchscript; knobs: min_size, max_size, proposals, max_detections, score_thresh. "
        "Default: torchvision, torch, torch-fast, openvino, onnx (fp32), torch-fast and openvino bf16, "
        "openvino:bf16:min_size=480,max_size=640,proposals=300 and openvino:int8 (with masklab[int8]: the model "
        "`masklab quantize` prepared, else one calibrated once on generated images)",
    )
    add_model_arguments(p, exclude=_NOT_TAKEN, defaults={"device": "cpu"}, helps={
        "weights": "local weights file, or 'random' (default: seeded random weights for a zoo name: speed does not "
        "depend on the weights, and benchmarks need no download)"})
    g = p.add_argument_group("images")
    g.add_argument("--images", type=int, default=1, help="generated images when none are given (default: 1)")
    g.add_argument("--size", default="480x640", help="generated image size HxW (default: 480x640)")
    g = p.add_argument_group("measurement")
    g.add_argument("--repeat", type=int, default=5, help="timed runs per image and case (default: 5)")
    g.add_argument("--no-cold", action="store_true", help="skip the fresh-process cold start / peak memory runs")
    g.add_argument("--no-flops", action="store_true", help="skip FLOP counting")
    g.add_argument("--no-peak", action="store_true", help="skip the machine peak microbenchmark")
    g.add_argument("--json", action="store_true", help="print the report as JSON instead of the table")
    p.set_defaults(run=run)


def run(args) -> int:
    from masklab.bench import default_cases, format_table, generated_images, parse_case, run_bench
    from masklab.errors import UsageError
    from masklab.inference.threads import configure_threads
    from masklab.io.images import load_image
    from masklab.models.zoo import MODELS
    from masklab.settings import InferenceSettings

    try:
        h, w = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise UsageError(f"--size must be HxW, e.g. 480x640, found {args.size!r}") from None
    base = InferenceSettings.from_args(args)
    # a zoo name without --weights: seeded random weights (timing needs no download); 'default': published ones
    weights = args.weights or ("random" if base.model in MODELS else None)
    base = base.replace(weights=None if weights == "default" else weights)
    cases = [parse_case(c, base=base) for c in args.case] if args.case else default_cases(base)
    if args.inputs:
        images = [load_image(p).array for p in args.inputs]
    else:
        images = generated_images(args.images, size_hw=(h, w))
    configure_threads()  # an entry point: every case (and the peak microbenchmark) runs on these threads
    report = run_bench(
        cases,
        images=images,
        repeat=args.repeat,
        cold=not args.no_cold,
        flops=not args.no_flops,
        peaks=not args.no_peak,
        log=lambda msg: print(f"bench: {msg}", file=sys.stderr, flush=True),
    )
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(format_table(report))
    return 1 if any(r.error for r in report.rows) else 0
