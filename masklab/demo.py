"""``make demo``: segment the sample photos with the default COCO model and print what was found.

    python -m masklab.demo --out outputs/demo
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from masklab.errors import MasklabError

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def _table(summary) -> str:
    rows = [("image", "objects", "what")]
    for r in summary.results:
        if r.instances is None:
            rows.append((r.item.path.name, "-", f"failed: {r.error}"))
        else:
            what = ", ".join(f"{n} {lab}" for lab, n in r.instances.counts().items()) or "nothing"
            rows.append((r.item.path.name, str(len(r.instances)), what))
    w0, w1 = (max(len(r[i]) for r in rows) for i in (0, 1))
    return "\n".join(f"{a.ljust(w0)}  {b.rjust(w1)}  {c}" for a, b, c in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="outputs/demo")
    p.add_argument("--samples", default=str(SAMPLES))
    args = p.parse_args(argv)

    from masklab.cli import _print_error
    from masklab.engine.batch import run_segment
    from masklab.engine.segmenter import Segmenter
    from masklab.io.inputs import expand_inputs

    items = expand_inputs([args.samples])
    try:
        seg = Segmenter()
    except MasklabError as e:
        _print_error(e)
        return e.exit_code
    print(f"model: {seg.spec.name} ({seg.loaded.weights_source}) on {seg.device}", file=sys.stderr)
    summary = run_segment(items, args.out, seg, viz="instance", keep_instances=True)
    print(_table(summary))
    print(f"\noverlays and JSON in {args.out}/ ({summary.seconds:.1f} s)")
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
