"""``masklab convert SRC DST --to coco|yolo|labelme``: convert a dataset between formats."""

from __future__ import annotations

import sys

from masklab.cli.validate import DATASET_FORMATS

#: ``masklab.data.convert.TARGETS`` (a test checks that the two agree).
TARGETS = ("coco", "yolo", "labelme", "cvat", "cvat-coco", "labelstudio", "fiftyone")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a dataset to COCO, YOLO-seg, LabelMe, or a dataset or run's predictions for CVAT, Label Studio, FiftyOne",
        description="Read SRC (COCO, VIA, LabelMe, VOC, YOLO-seg; auto-detected; or, for cvat, cvat-coco, labelstudio and "
        "fiftyone, a finished 'masklab segment' --out folder, whose predictions keep their scores) and write it to "
        "the new folder DST.",
    )
    p.add_argument("src", metavar="SRC", help="dataset file or folder")
    p.add_argument("dst", metavar="DST", help="output folder (new or empty)")
    p.add_argument("--to", required=True, choices=TARGETS, help="target format")
    p.add_argument("--format", default=None, choices=DATASET_FORMATS, help="source format (default: auto-detect)")
    p.add_argument(
        "--polygon-tolerance", type=float, default=0.0, metavar="PX",
        help="simplify YOLO and LabelMe polygons by up to PX pixels (default 0: exact, filling them gives the masks back)",
    )
    p.add_argument("--labelstudio-kind", default="brush", choices=("brush", "polygon"),
                   help="Label Studio results: brush RLE (exact, holes kept; default) or polygons (editable, no holes)")
    p.add_argument("--image-url-prefix", default="", metavar="URL",
                   help="Label Studio: put before each image file name in the tasks (e.g. /data/local-files/?d=photos/)")
    p.set_defaults(run=run)


def run(args) -> int:
    from masklab.data.convert import TOOL_TARGETS, convert_dataset, export_for_tool

    if args.to in TOOL_TARGETS:
        res = export_for_tool(args.src, args.dst, to=args.to, format=args.format, polygon_tolerance=args.polygon_tolerance,
                              labelstudio_kind=args.labelstudio_kind, image_url_prefix=args.image_url_prefix)
    else:
        res = convert_dataset(args.src, args.dst, to=args.to, format=args.format, polygon_tolerance=args.polygon_tolerance)
    print(f"converted {res.images} images, {res.instances} instances -> {res.path}", file=sys.stderr)
    for n in res.notes:
        print(f"  note: {n}", file=sys.stderr)
    return 0
