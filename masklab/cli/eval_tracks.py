"""``masklab eval-tracks --gt GT.mot.txt --pred PRED.mot.txt|RUN_DIR``: HOTA, MOTA, IDF1, id switches and,
with ``--gt-counts``, counting accuracy."""

from __future__ import annotations

import json
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval-tracks",
        help="tracking metrics (HOTA, MOTA, IDF1, id switches) of MOTChallenge files, and counting accuracy",
        description="Compare predicted tracks with ground truth (MOTChallenge text files). MOTA, IDF1 and id switches "
        "come from motmetrics, HOTA from masklab's TrackEval-equivalent code. Exit code 0; with --gt-counts, 1 when "
        "any line count differs.",
    )
    p.add_argument("--gt", required=True, metavar="GT.mot.txt", help="ground-truth tracks")
    p.add_argument("--pred", required=True, metavar="PRED.mot.txt|DIR",
                   help="predicted tracks, or a masklab segment --track output folder holding one <name>.mot.txt")
    p.add_argument("--iou", type=float, default=0.5, help="box IoU for a match in MOTA/IDF1 (default: 0.5)")
    p.add_argument("--gt-counts", default=None, metavar="GT.counts.json", help="ground-truth line counts; compared "
                   "with the run's <name>.counts.json (beside the predicted .mot.txt)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    p.set_defaults(run=run)


def _pred_file(pred: str) -> Path:
    from masklab.errors import UsageError

    path = Path(pred)
    if not path.is_dir():
        return path
    found = sorted(p for p in path.glob("*.mot.txt") if not p.name.endswith(".gt.mot.txt"))
    if len(found) != 1:
        raise UsageError(f"{path}: expected one <name>.mot.txt, found {[p.name for p in found] or 'none'}; name the file")
    return found[0]


def run(args) -> int:
    from masklab.errors import UsageError
    from masklab.evaluation.tracks import count_errors, evaluate_tracks
    from masklab.io.atomic import atomic_write_json

    pred = _pred_file(args.pred)
    result: dict = {"gt": args.gt, "pred": str(pred), "iou": args.iou, "metrics": evaluate_tracks(args.gt, pred, iou=args.iou)}
    code = 0
    if args.gt_counts:
        counts = pred.with_name(pred.name.removesuffix(".mot.txt") + ".counts.json")
        if not counts.is_file():
            raise UsageError(f"--gt-counts: no {counts.name} beside {pred}")
        result["counts"] = count_errors(json.loads(Path(args.gt_counts).read_text()), json.loads(counts.read_text()))
        code = 0 if result["counts"]["exact"] else 1
    m = result["metrics"]
    print(f"HOTA {m['hota']:.3f}  DetA {m['deta']:.3f}  AssA {m['assa']:.3f}  MOTA {m['mota']:.3f}  IDF1 {m['idf1']:.3f}  "
          f"id switches {int(m['num_switches'])}  FP {int(m['num_false_positives'])}  misses {int(m['num_misses'])}")
    for name, line in result.get("counts", {}).get("lines", {}).items():
        for d in ("in", "out"):
            v = line[d]
            print(f"line {name} {d}: {v['pred']} counted, {v['gt']} true (error {v['error']:+d})")
    if args.json:
        atomic_write_json(args.json, result, indent=2)
    return code
