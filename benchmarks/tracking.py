"""Tracking benchmark: the shipped demo model on a generated clip of moving shapes.

    .venv/bin/python benchmarks/tracking.py                         # 120 frames, 256 x 160, 10 fps
    .venv/bin/python benchmarks/tracking.py --frames 60 --png docs/tracking_frame.png --png-frame 40
    .venv/bin/python benchmarks/tracking.py --seed 1               # a variant of the same story

The clip (:func:`masklab.data.moving_shapes.benchmark_scene`): shapes of three classes crossing a line in
both directions, one that stops before the line, two whose paths cross with a brief occlusion, one that
leaves the frame and comes back before crossing; ``--seed N`` draws a variant of it (colours, sizes,
rows, speeds, timings), so the tracker is checked on more than the one clip. Each frame is segmented once (model time), then
tracked and counted (tracker time: :class:`masklab.tracking.TrackingSession`, which includes the
counting and the MOT rows). Reported: IDF1, HOTA, MOTA and id switches against the generator's tracks
(``masklab eval-tracks``'s code), the line counts against the generator's truth, frames/s without and
with tracking, and the tracker's share of the model time. Goals (issue 17): exact counts per class and
direction, IDF1 >= 0.9, tracker overhead < 5 % of the model time.

Numbers are for this machine at this moment; on a shared CPU they move with the neighbours' load.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from masklab import Segmenter  # noqa: E402
from masklab.data.moving_shapes import benchmark_scene, gt_rows, line_truth  # noqa: E402
from masklab.evaluation.tracks import count_errors, evaluate_tracks  # noqa: E402
from masklab.inference.threads import configure_threads  # noqa: E402
from masklab.io.atomic import atomic_save_image  # noqa: E402
from masklab.io.formats.mot import write_mot  # noqa: E402
from masklab.settings import InferenceSettings  # noqa: E402
from masklab.tracking import CountLine, TrackingOptions, TrackingSession  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--seed", type=int, default=None, help="a seeded variant of the clip (default: the reference clip)")
    ap.add_argument("--score-thresh", type=float, default=0.5)
    ap.add_argument("--png", default=None, help="save one annotated frame here")
    ap.add_argument("--png-frame", type=int, default=60)
    ap.add_argument("--json", default=None, help="also write the results as JSON")
    args = ap.parse_args(argv)
    configure_threads()
    clip = benchmark_scene(n_frames=args.frames, seed=args.seed)
    h, w = clip.frames.shape[1:3]
    seg = Segmenter(settings=InferenceSettings(model=str(ROOT / "masklab/assets/shapes_small.safetensors"), device="cpu",
                                               min_size=h, max_size=w, score_thresh=args.score_thresh))
    session = TrackingSession(TrackingOptions(lines=(CountLine(*clip.line),)), styles=("instance",))
    seg.predict([clip.frames[0]])  # warm-up, not timed
    model_s = 0.0
    for t, rgb in enumerate(clip.frames):
        t0 = time.perf_counter()
        inst = seg.predict([rgb])[0]
        model_s += time.perf_counter() - t0
        tracked = session.step(inst, frame=t, time_s=t / clip.fps, image=rgb)
        if args.png and args.png_frame - 20 <= t <= args.png_frame:  # the trails need the frames before
            drawn = session.draw(rgb, tracked)
            if t == args.png_frame:
                atomic_save_image(args.png, drawn)
    with tempfile.TemporaryDirectory() as tmp:
        paths = session.write(Path(tmp), "bench")
        gt = write_mot(Path(tmp) / "gt.mot.txt", gt_rows(clip))
        metrics = evaluate_tracks(gt, paths["mot"])
        counts = json.loads(paths["counts"].read_text())
    errors = count_errors({"lines": {"line": line_truth(clip)}}, counts)
    n = len(clip.frames)
    result = {
        "machine": f"{platform.processor() or platform.machine()}",
        "seed": args.seed, "frames": n, "size_wh": [w, h],
        "idf1": round(metrics["idf1"], 4), "hota": round(metrics["hota"], 4), "mota": round(metrics["mota"], 4),
        "id_switches": int(metrics["num_switches"]), "exact_counts": errors["exact"],
        "counts": {d: counts["lines"]["line"][d] for d in ("in", "out")}, "truth": line_truth(clip),
        "fps_without_tracking": round(n / model_s, 3), "fps_with_tracking": round(n / (model_s + session.seconds), 3),
        "tracker_ms_per_frame": round(1000 * session.seconds / n, 3), "tracker_share_of_model_time": round(session.seconds / model_s, 4),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
