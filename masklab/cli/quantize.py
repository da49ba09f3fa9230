"""``masklab quantize --model M [--weights W] --calib DATA [--out FILE]``: an int8 OpenVINO model."""

from __future__ import annotations

import sys

from masklab.cli.options import add_model_arguments


def add_parser(sub) -> None:
    p = sub.add_parser(
        "quantize",
        help="make an int8 OpenVINO model (post-training quantisation, calibrated on your images)",
        description="Quantise the model's OpenVINO core to int8 with NNCF, calibrated on your images (a folder "
        "or a dataset in any supported format; 100-300 images like those you will segment, on which the "
        "model finds objects). Faster on CPUs with VNNI/AMX; results are close to fp32, not equal (see "
        "README 'int8'). Without --out the model is cached where --precision int8 finds it.",
    )
    p.add_argument("--calib", required=True, metavar="DATA", help="calibration images: a folder or a dataset")
    p.add_argument("--out", "-o", metavar="FILE", help="write the int8 model here (.xml + .bin); default: the "
                   "cache that `--precision int8` reads for this model, weights and options")
    p.add_argument("--calib-size", type=int, default=300, metavar="N",
                   help="use at most N calibration images, spread over the set (default 300)")
    p.add_argument("--fp32-heads", action="store_true",
                   help="keep the box and mask predictors in fp32 (closer to fp32 results, slightly slower)")
    add_model_arguments(p, exclude=("runtime", "classes"), title="model and baked-in options (recorded in the model card)")
    p.set_defaults(run=run)


def run(args) -> int:
    from masklab.data.calibration import calibration_images
    from masklab.errors import UsageError
    from masklab.export.quantize import ensure_quantized, quantize_ir, quantized_path
    from masklab.models.exported import read_card
    from masklab.models.loading import load_model
    from masklab.runtime import converted_path
    from masklab.settings import InferenceSettings

    if args.calib_size < 1:
        raise UsageError(f"--calib-size must be a positive integer, found {args.calib_size}")
    settings = InferenceSettings.from_args(args)
    images = calibration_images(args.calib, limit=args.calib_size)
    options = {"fp32_heads": args.fp32_heads, "calib_name": images.source}
    loaded = load_model(settings)
    if loaded.export_format not in (None, "openvino"):
        raise UsageError(f"{settings.model} is a {loaded.export_format} export; quantize a model name, weights or an OpenVINO .xml")
    if loaded.export_format == "openvino":  # an fp32 IR already: quantise it as it is
        out = quantize_ir(loaded.weights_source, images, out=args.out or quantized_path(loaded.weights_source), **options)
    else:
        fp32_ir = converted_path(loaded, "openvino")  # the fp32 conversion `--backend openvino` caches too
        out = ensure_quantized(loaded, images, fp32_ir=fp32_ir, out=args.out, force=True, **options)
    q = read_card(out).quantization or {}
    print(f"int8 model of {loaded.card.name} -> {out}\n  calibrated on {q.get('subset_size')} of {len(images)} images "
          f"from {images.source}; the fp32 model found objects in {q.get('with_detections')} of the "
          f"{q.get('checked')} it checked", file=sys.stderr)
    weights = f" --weights {settings.weights}" if settings.weights else ""
    how = f"--model {out}" if args.out or loaded.export_format else f"--model {settings.model}{weights} --precision int8"
    print(f"  run it: masklab segment IMAGES {how}", file=sys.stderr)
    return 0
