"""Tracking and counting on synthetic detections (no model): the bugs other trackers' users reported
(supervision #2578, #1868, #1855, #418/#754; ultralytics #3823) as tests, MOT files read back by
motmetrics, and the metrics checked on hand-computed cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import masklab
from masklab.cli import main
from masklab.errors import UsageError
from masklab.evaluation.tracks import count_errors, evaluate_tracks, hota
from masklab.io.formats.mot import MotRow, read_mot, write_mot
from masklab.runs.video import _frames, _open_clip
from masklab.structures.instances import Instances
from masklab.tracking import (
    TRACK_IDS,
    Counter,
    CountLine,
    MaskTracker,
    TrackerSettings,
    Zone,
    parse_line,
    parse_zone,
)

H, W = 100, 200
DEMO_MODEL = Path(masklab.__file__).parent / "assets" / "shapes_small.safetensors"
CLASSES = {"square": 1, "circle": 2}


def _frame(objs, *, size=(H, W)) -> Instances:
    """Instances of square masks: ``objs`` = [(cx, cy, label), ...], 16 x 16 px each, score 0.95."""
    masks = np.zeros((len(objs), *size), bool)
    for k, (cx, cy, _) in enumerate(objs):
        masks[k, max(int(cy) - 8, 0):int(cy) + 8, max(int(cx) - 8, 0):int(cx) + 8] = True
    labels = [o[2] for o in objs]
    return Instances.from_masks(masks, class_ids=[CLASSES[lab] for lab in labels], labels=labels, scores=[0.95] * len(objs))


def _run(frames, *, lines=(), zones=(), settings=TrackerSettings(), hysteresis_px=2.0, fps=10.0):
    """Track and count ``frames`` (lists of objects or None for an empty frame); returns (counter, ids per frame)."""
    tracker, counter, ids = MaskTracker(settings), Counter(lines=lines, zones=zones, hysteresis_px=hysteresis_px), []
    for t, objs in enumerate(frames):
        up = tracker.update(_frame(objs or []))
        counter.update(up.instances, frame=t, time_s=t / fps, ended=up.ended)
        ids.append(up.instances.extra[TRACK_IDS].tolist())
    counter.finish()
    return counter, ids


VLINE = CountLine(100, 100, 100, 0)  # points up: its right is the frame's right, so moving right is "in"


def test_line_counts_once_however_it_jitters_on_it():
    xs = list(range(60, 99, 4)) + [100 + d for d in (1.5, -1.5, 1.0, -1.8, 1.9, -1.2, 1.5, -1.5)] + list(range(104, 150, 4))
    counter, ids = _run([[(x, 50, "square")] for x in xs], lines=(VLINE,))
    assert counter.line_counts("line") == {"in": {"total": 1, "by_class": {"square": 1}}, "out": {"total": 0, "by_class": {}}}
    assert len({i for f in ids for i in f if i >= 0}) == 1
    # control: without the hysteresis band the same jitter counts again and again
    counter0, _ = _run([[(x, 50, "square")] for x in xs], lines=(VLINE,), hysteresis_px=0.0)
    assert counter0.line_counts("line")["in"]["total"] > 1


def test_an_id_switch_bridged_by_the_buffer_does_not_count_twice():
    """ultralytics #3823: an object hidden for a few frames around the line keeps its id and counts once."""
    frames = [[(x, 50, "square")] for x in range(60, 96, 4)] + [None] * 5 + [[(x, 50, "square")] for x in range(116, 170, 4)]
    counter, ids = _run(frames, lines=(VLINE,), settings=TrackerSettings(buffer_frames=10))
    assert len({i for f in ids for i in f if i >= 0}) == 1
    assert counter.line_counts("line")["in"]["total"] == 1
    # without a buffer the object comes back under a new id: still no second count (a track's first side is no crossing)
    counter0, ids0 = _run(frames, lines=(VLINE,), settings=TrackerSettings(buffer_frames=0))
    assert len({i for f in ids0 for i in f if i >= 0}) == 2
    assert counter0.line_counts("line")["in"]["total"] == 0


def test_two_classes_crossing_together_count_per_class_with_distinct_ids():
    frames = [[(x, 30, "square"), (x + 2, 46, "circle")] for x in range(60, 150, 5)]
    counter, ids = _run(frames, lines=(VLINE,))
    assert counter.line_counts("line")["in"] == {"total": 2, "by_class": {"square": 1, "circle": 1}}
    assert all(len(set(f)) == len(f) for f in ids if min(f) >= 0)


def test_a_track_id_never_spans_two_classes():
    """supervision #1868: the detector's class flips in place; the id does not carry over to the new class."""
    frames = [[(x, 50, "square")] for x in range(60, 100, 4)] + [[(x, 50, "circle")] for x in range(100, 140, 4)]
    tracker, seen = MaskTracker(TrackerSettings()), {}
    for objs in frames:
        inst = tracker.update(_frame(objs)).instances
        for tid, lab in zip(inst.extra[TRACK_IDS], inst.labels):
            if tid >= 0:
                seen.setdefault(int(tid), set()).add(lab)
    assert len(seen) == 2 and all(len(labs) == 1 for labs in seen.values())
    # control: class-agnostic tracking keeps one id for both classes
    tracker = MaskTracker(TrackerSettings(per_class=False))
    ids = {int(t) for objs in frames for t in tracker.update(_frame(objs)).instances.extra[TRACK_IDS] if t >= 0}
    assert len(ids) == 1


def test_untracked_detections_never_count():
    """supervision #2578: detections without a track id are not one shared track."""
    counter = Counter(lines=(VLINE,))
    for t, x in enumerate(range(60, 150, 5)):
        inst = _frame([(x, 50, "square"), (x, 20, "square")])
        tracked = Instances(boxes=inst.boxes, masks=inst.masks, scores=inst.scores, class_ids=inst.class_ids,
                            labels=inst.labels, image_size=inst.image_size, extra={TRACK_IDS: np.array([-1, -1])})
        counter.update(tracked, frame=t, time_s=t / 10)
    assert counter.line_counts("line")["in"]["total"] == 0 and counter.events == []
    with pytest.raises(UsageError, match="track"):
        Counter(lines=(VLINE,)).update(_frame([(50, 50, "square")]), frame=0, time_s=0.0)


def test_a_vanished_object_leaves_the_zone():
    """supervision #1855: occupancy drops the frame an object vanishes; its exit is dated to its last frame seen."""
    zone = Zone(((40, 20), (120, 20), (120, 80), (40, 80)), name="z")
    frames = [[(x, 50, "square")] for x in range(10, 90, 8)] + [None] * 6
    counter, _ = _run(frames, zones=(zone,), settings=TrackerSettings(buffer_frames=3))
    occ = counter._occupancy["z"]
    assert max(occ) == 1 and occ[-6:] == [0] * 6
    doc = counter.counts()["zones"]["z"]
    assert doc["entries"]["total"] == 1 and doc["exits"]["total"] == 1
    (stay,) = doc["dwell"]
    assert stay["exit_s"] == pytest.approx(0.9)  # frame 9 (x = 82), the last one it was seen
    assert stay["dwell_s"] == pytest.approx(stay["exit_s"] - stay["enter_s"])


def test_zone_dwell_time():
    zone = Zone(((50, 0), (150, 0), (150, 100), (50, 100)), name="z")
    frames = [[(x, 50, "square")] for x in range(20, 190, 10)]  # inside from x=60 (t=0.4) to x=140, exits at x=160 (t=1.4)
    counter, _ = _run(frames, zones=(zone,))
    doc = counter.counts()["zones"]["z"]
    (stay,) = doc["dwell"]
    assert (stay["enter_s"], stay["exit_s"], stay["dwell_s"]) == pytest.approx((0.4, 1.4, 1.0))
    assert doc["occupancy"]["max"] == 1 and 0 < doc["occupancy"]["mean"] < 1


def test_tracker_keeps_every_mask_and_the_order():
    """supervision #418/#754: masks dropped by the tracker."""
    tracker = MaskTracker(TrackerSettings(min_hits=1))
    for x in (60, 64, 68):
        inst = _frame([(x, 30, "square"), (x, 70, "circle")])
        out = tracker.update(inst).instances
        assert np.array_equal(out.masks, inst.masks) and out.labels == inst.labels
        assert out.masks.any(axis=(1, 2)).all()
    assert out.extra[TRACK_IDS].tolist() == [1, 2]


@pytest.mark.parametrize("mask_weight, kept", [(0.8, True), (0.0, False)])
def test_mask_iou_separates_overlapping_boxes(mask_weight, kept):
    """Two L-shaped objects whose boxes nearly coincide: the mask term keeps each id on its own shape."""
    def frame(dx):
        m = np.zeros((2, H, W), bool)
        m[0, 20:60, 40 + dx:48 + dx] = True
        m[0, 52:60, 40 + dx:80 + dx] = True  # an L
        m[1, 20:28, 40 + dx:80 + dx] = True
        m[1, 20:60, 72 + dx:80 + dx] = True  # the mirrored L, same box
        return Instances.from_masks(m, class_ids=[1, 1], labels=["square"] * 2, scores=[0.95, 0.95])

    tracker = MaskTracker(TrackerSettings(min_hits=1, mask_weight=mask_weight))
    first = tracker.update(frame(0)).instances.extra[TRACK_IDS].tolist()
    swapped = frame(2)[[1, 0]]  # the same two objects, moved, listed the other way round
    # boxes alone (the control) cannot tell the two apart
    assert (tracker.update(swapped).instances.extra[TRACK_IDS].tolist() == first[::-1]) is kept


def test_mot_file_round_trip_and_motmetrics_reads_it(tmp_path):
    mm = pytest.importorskip("motmetrics")
    rows = [MotRow(2, 1, 10.0, 20.0, 30.0, 40.0, 0.9), MotRow(1, 2, 1.5, 2.5, 3.0, 4.0, 0.8), MotRow(1, 1, 5, 6, 7, 8, 1.0)]
    path = write_mot(tmp_path / "a.mot.txt", rows)
    assert read_mot(path) == sorted(rows, key=lambda r: (r.frame, r.track_id))
    df = mm.io.loadtxt(str(path), fmt="mot15-2D", min_confidence=-1)
    assert len(df) == 3
    assert df.loc[(2, 1)][["X", "Y", "Width", "Height"]].tolist() == [10.0, 20.0, 30.0, 40.0]
    with pytest.raises(UsageError, match="frame >= 1"):
        write_mot(tmp_path / "b.mot.txt", [MotRow(0, 1, 0, 0, 1, 1)])


def _switch_case(tmp_path):
    """One object over 4 frames; the prediction switches from id 7 to id 8 after frame 2."""
    gt = [MotRow(f, 1, 10, 10, 20, 20) for f in (1, 2, 3, 4)]
    pred = [MotRow(f, 7 if f <= 2 else 8, 10, 10, 20, 20) for f in (1, 2, 3, 4)]
    return write_mot(tmp_path / "gt.mot.txt", gt), write_mot(tmp_path / "pred.mot.txt", pred), gt, pred


def test_metrics_agree_with_hand_computation(tmp_path):
    gt_path, pred_path, gt, pred = _switch_case(tmp_path)
    m = evaluate_tracks(gt_path, pred_path)
    # MOTA = 1 - (misses + FP + switches) / objects = 1 - 1/4; IDF1 = 2 IDTP / (2 IDTP + IDFP + IDFN) = 4/8
    assert m["num_switches"] == 1 and m["mota"] == pytest.approx(0.75) and m["idf1"] == pytest.approx(0.5)
    # HOTA: DetA = 1; each TP's association is 2 / (2 + 2 + 0) = 0.5, so HOTA = sqrt(0.5)
    assert m["deta"] == pytest.approx(1.0) and m["assa"] == pytest.approx(0.5) and m["hota"] == pytest.approx(np.sqrt(0.5))
    # box IoU 0.625 matches for the 12 alphas 0.05..0.60 of 19: HOTA = 12/19 for one perfectly kept track
    short = [MotRow(r.frame, r.track_id, 10, 10, 20, 12.5) for r in gt]
    assert hota(gt, short)["hota"] == pytest.approx(12 / 19)
    assert hota(gt, [])["hota"] == 0.0


def test_count_errors_and_eval_tracks_cli(tmp_path, capsys):
    gt_path, pred_path, *_ = _switch_case(tmp_path)
    truth = {"lines": {"line": {"in": {"total": 2, "by_class": {"square": 2}}, "out": {"total": 0, "by_class": {}}}}}
    got = {"lines": {"line": {"in": {"total": 2, "by_class": {"square": 1, "circle": 1}}, "out": {"total": 0, "by_class": {}}}}}
    err = count_errors(truth, got)
    assert not err["exact"] and err["lines"]["line"]["in"]["by_class"]["circle"]["error"] == 1
    assert count_errors(truth, truth)["exact"]
    (tmp_path / "pred.counts.json").write_text(json.dumps(got))
    (tmp_path / "gt.counts.json").write_text(json.dumps(truth))
    code = main(["eval-tracks", "--gt", str(gt_path), "--pred", str(pred_path), "--gt-counts", str(tmp_path / "gt.counts.json"),
                 "--json", str(tmp_path / "r.json")])
    assert code == 1  # the per-class counts differ
    assert json.loads((tmp_path / "r.json").read_text())["metrics"]["num_switches"] == 1
    assert "HOTA 0.707" in capsys.readouterr().out


@pytest.mark.parametrize(
    "text, kind, expected, error",
    [
        ("10,20,30,40", "line", ("line", (10, 20, 30, 40)), None),
        ("10,20,30,40:gate", "line", ("gate", (10, 20, 30, 40)), None),
        ("10,20,30", "line", None, "X1,Y1,X2,Y2"),
        ("1,1,1,1", "line", None, "same point"),
        ("a,b,c,d", "line", None, "numbers"),
        ("0,0,10,0,10,10:dock", "zone", ("dock", ((0, 0), (10, 0), (10, 10))), None),
        ("0,0,10,0", "zone", None, "3 or more"),
        ("0,0,10,0,10", "zone", None, "3 or more"),
    ],
)
def test_parse_lines_and_zones(text, kind, expected, error):
    parse = parse_line if kind == "line" else parse_zone
    if error:
        with pytest.raises(UsageError, match=error):
            parse(text)
        return
    got = parse(text)
    coords = (got.x1, got.y1, got.x2, got.y2) if kind == "line" else got.points
    assert (got.name, coords) == expected


def test_cli_refuses_counting_without_track_and_duplicate_names(tmp_path, capsys):
    assert main(["segment", str(tmp_path), "--out", str(tmp_path / "o"), "--count-line", "0,0,1,1"]) == 2
    assert "--track" in capsys.readouterr().err
    with pytest.raises(UsageError, match="share a name"):
        Counter(lines=(CountLine(0, 0, 1, 1), CountLine(0, 0, 2, 2)))


def test_a_folder_of_frames_reads_in_name_order_at_fps(tmp_path):
    from masklab.io.atomic import atomic_save_image

    for k in (2, 0, 1):
        atomic_save_image(tmp_path / f"f{k:03d}.png", np.full((8, 12, 3), 40 * k, np.uint8))
    clip = _open_clip(tmp_path, 0.0, None, 5.0)
    got = [(i, t, int(rgb[0, 0, 0])) for i, t, rgb in _frames(clip, every=1, start_s=0.0, end_s=None)]
    assert got == [(0, 0.0, 0), (1, 0.2, 40), (2, 0.4, 80)]


@pytest.mark.slow
def test_end_to_end_demo_model_counts_equal_the_generator_truth(tmp_path, monkeypatch):
    """The shipped demo model on a generated clip (a square crossing right, a circle left, a triangle
    stopping before the line): the counts file equals the generator's truth, eval-tracks agrees."""
    from masklab.data.moving_shapes import crossing_scene, write_clip

    monkeypatch.setenv("MASKLAB_NUM_THREADS", "1")
    video = write_clip(tmp_path / "clip.mp4", crossing_scene(n_frames=16))
    out = tmp_path / "out"
    code = main(["segment", str(video), "--out", str(out), "--model", str(DEMO_MODEL),
                 "--device", "cpu", "--min-size", "128", "--max-size", "192", "--score-thresh", "0.9",
                 "--track", "--count-line", "96,128,96,0", "--zone", "0,0,60,0,60,128,0,128:left", "--no-progress"])
    assert code == 0
    truth = json.loads((tmp_path / "clip.gt.counts.json").read_text())["lines"]["line"]
    counts = json.loads((out / "clip.counts.json").read_text())
    assert truth["in"]["total"] == 1 and truth["out"]["total"] == 1  # the generator's truth is not empty
    assert {d: counts["lines"]["line"][d] for d in ("in", "out")} == {d: truth[d] for d in ("in", "out")}
    records = [json.loads(line) for line in (out / "clip.jsonl").read_text().splitlines()]
    assert len(records) == 16 and all("track_id" in d for r in records for d in r["instances"])
    events = [json.loads(line) for line in (out / "clip.events.jsonl").read_text().splitlines()]
    assert sorted((e["label"], e["direction"]) for e in events if e["kind"] == "line") == [("circle", "out"), ("square", "in")]
    assert counts["zones"]["left"]["entries"]["total"] >= 1
    assert main(["eval-tracks", "--gt", str(tmp_path / "clip.gt.mot.txt"), "--pred", str(out),
                 "--gt-counts", str(tmp_path / "clip.gt.counts.json")]) == 0
