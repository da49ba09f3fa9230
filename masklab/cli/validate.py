"""``masklab validate DATA``: list what would break training or silently hurt it, with per-class counts."""

from __future__ import annotations

import sys

#: The dataset formats the readers know: ``masklab.data.readers.FORMATS``, spelled out here so building the
#: CLI parser does not import the data package (a test checks that the two agree).
DATASET_FORMATS = ("coco", "via", "labelme", "voc", "yolo", "labelstudio", "cvat")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "validate",
        help="check a dataset before training (missing images, bad polygons, empty masks, unknown ids...)",
        description="Check a dataset (COCO, VIA, LabelMe, VOC, YOLO-seg). Exit code 0: no problems; 1: problems found.",
    )
    p.add_argument("data", metavar="DATA", help="dataset file or folder (format auto-detected)")
    p.add_argument("--format", default=None, choices=DATASET_FORMATS, help="skip auto-detection")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the full report as JSON")
    p.add_argument("--no-images", action="store_true", help="do not open the image files (faster; skips missing/unreadable/size checks)")
    p.set_defaults(run=run)


def run(args) -> int:
    from masklab.data.validate import validate_dataset

    report = validate_dataset(args.data, format=args.format, check_files=not args.no_images)
    print(report.render())
    if args.json:
        from masklab.io.atomic import atomic_write_json

        atomic_write_json(args.json, report.to_dict(), indent=2)
        print(f"\nfull report: {args.json}", file=sys.stderr)
    return 0 if report.ok else 1
