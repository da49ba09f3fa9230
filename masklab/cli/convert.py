"""``masklab convert SRC DST --to coco|yolo|labelme``: convert a dataset between formats."""

from __future__ import annotations

import sys

from masklab.cli.validate import DATASET_FORMATS

#: ``masklab.data.convert.TARGETS`` (a test checks that the two agree).
TARGETS = ("coco", "yolo", "labelme")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a dataset to COCO, YOLO-seg or LabelMe",
        description="Read SRC (COCO, VIA, LabelMe, VOC, YOLO-seg; auto-detected) and write it to the new folder DST.",
    )
    p.add_argument("src", metavar="SRC", help="dataset file or folder")
    p.add_argument("dst", metavar="DST", help="output folder (new or empty)")
    p.add_argument("--to", required=True, choices=TARGETS, help="target format")
    p.add_argument("--format", default=None, choices=DATASET_FORMATS, help="source format (default: auto-detect)")
    p.add_argument(
        "--polygon-tolerance", type=float, default=0.0, metavar="PX",
        help="simplify YOLO and LabelMe polygons by up to PX pixels (default 0: exact, filling them gives the masks back)",
    )
    p.set_defaults(run=run)


def run(args) -> int:
    from masklab.data.convert import convert_dataset

    res = convert_dataset(args.src, args.dst, to=args.to, format=args.format, polygon_tolerance=args.polygon_tolerance)
    print(f"converted {res.images} images, {res.instances} instances -> {res.path}", file=sys.stderr)
    for n in res.notes:
        print(f"  note: {n}", file=sys.stderr)
    return 0
