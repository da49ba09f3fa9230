"""``make demo``: segment the sample photos with the default COCO model and print what was found.

With no network and no cached COCO weights it says so in one line and runs the offline demo model
shipped in ``masklab/assets/`` (trained with ``masklab train`` on the synthetic shapes) on generated
shapes scenes instead, so the whole pipeline still runs end to end.

    python -m masklab.demo --out outputs/demo
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from masklab.errors import MasklabError, WeightsUnavailableError

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
#: The offline demo model: the ``small`` architecture trained on ``masklab data shapes`` (see its card).
DEMO_MODEL = Path(__file__).resolve().parent / "assets" / "shapes_small.safetensors"


def write_demo_scenes(folder: Path, *, n: int = 3, size: int = 256, seed: int = 2024) -> Path:
    """Generate ``n`` shapes scenes (PNG) into ``folder`` for the offline demo model; returns ``folder``."""
    import numpy as np

    from masklab.data.shapes import random_scene
    from masklab.io.atomic import atomic_save_image

    rng = np.random.default_rng(seed)
    for i in range(n):
        atomic_save_image(folder / f"shapes_{i + 1}.png", random_scene(rng, size=size).image)
    return folder


def _table(summary) -> str:
    rows = [("image", "objects", "what")]
    for r in summary.results:
        if not r.ok:
            rows.append((r.item.path.name, "-", f"failed: {r.error}"))
        else:
            what = ", ".join(f"{n} {lab}" for lab, n in r.counts.items()) or "nothing"
            rows.append((r.item.path.name, str(r.n_instances), what + (" (done by an earlier run)" if r.skipped else "")))
    w0, w1 = (max(len(r[i]) for r in rows) for i in (0, 1))
    return "\n".join(f"{a.ljust(w0)}  {b.rjust(w1)}  {c}" for a, b, c in rows)


#: the demo prepares the fast path itself for models this small (the offline demo model: a conversion of
#: seconds, cached for every later run); a larger one (the COCO model: ~1 min on 2 cores) runs eager and
#: the Segmenter prints the one command that prepares it
QUICK_TO_PREPARE_BYTES = 50 * 2**20


def _fast_path(seg) -> None:
    weights = Path(seg.loaded.weights_source)
    if seg.eager_by_default and weights.is_file() and weights.stat().st_size < QUICK_TO_PREPARE_BYTES:
        seg.prepare()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="outputs/demo")
    p.add_argument("--samples", default=str(SAMPLES))
    args = p.parse_args(argv)

    from masklab import Segmenter
    from masklab.cli import _print_error
    from masklab.inference import configure_threads
    from masklab.io.inputs import expand_inputs
    from masklab.runs import run_segment

    configure_threads()  # an entry point: every CPU this process may use
    items = expand_inputs([args.samples])
    try:
        seg = Segmenter()
    except WeightsUnavailableError as e:
        reason = str(e).splitlines()[0]
        print(f"masklab demo: COCO weights unavailable ({reason}); using the offline demo model "
              f"shapes_demo ({DEMO_MODEL.name}; `--model shapes_demo` in any masklab command) on generated "
              "shapes scenes instead", file=sys.stderr)
        try:
            seg = Segmenter(str(DEMO_MODEL))
        except MasklabError as e2:
            _print_error(e2)
            return e2.exit_code
        items = expand_inputs([str(write_demo_scenes(Path(args.out) / "scenes"))])
    except MasklabError as e:
        _print_error(e)
        return e.exit_code
    _fast_path(seg)
    print(f"model: {seg.spec.name} ({seg.loaded.weights_source}) on {seg.device}, "
          f"runtime: {seg.runtime.name} {seg.runtime.precision}", file=sys.stderr)
    # A demo redoes everything: a second `make demo` shows the same table, not "already done".
    summary = run_segment(items, args.out, seg, viz="instance", skip_existing=False)
    print(_table(summary))
    print(f"\noverlays and JSON in {args.out}/ ({summary.seconds:.1f} s)")
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
