"""``masklab data shapes --out DIR --n 500``: write the synthetic shapes dataset (COCO format)."""

from __future__ import annotations

import sys


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="make example datasets (shapes)", description="Write example datasets.")
    dsub = p.add_subparsers(dest="data_command", metavar="DATASET")
    s = dsub.add_parser(
        "shapes",
        help="squares, circles and triangles on coloured backgrounds (COCO JSON + PNGs)",
        description="Write DIR/annotations.json (COCO, masks as RLE) and DIR/images/*.png.",
    )
    s.add_argument("--out", "-o", required=True, metavar="DIR", help="output folder")
    s.add_argument("--n", type=int, default=500, help="number of images (default: 500)")
    s.add_argument("--size", type=int, default=128, help="image width and height in pixels (default: 128)")
    s.add_argument("--seed", type=int, default=0, help="random seed: the same seed writes the same images (default: 0)")
    p.set_defaults(run=run, _parser=p)


def run(args) -> int:
    if args.data_command != "shapes":
        args._parser.print_help(sys.stderr)
        return 2
    from masklab.data.shapes import write_shapes

    path = write_shapes(args.out, n=args.n, size=args.size, seed=args.seed, progress=sys.stderr.isatty())
    print(f"wrote {args.n} images and {path}", file=sys.stderr)
    return 0
