"""The tracker's appearance cue, duplicate rule and re-identification, on synthetic frames (no model):
solid squares drawn on a grey background, later ones on top, each detection the visible part of one."""

from __future__ import annotations

import numpy as np
import pytest

from masklab.errors import UsageError
from masklab.structures.instances import Instances
from masklab.tracking import TRACK_IDS, MaskTracker, TrackerSettings
from masklab.tracking.appearance import color_descriptor, color_similarity

H, W = 100, 200
CLASSES = {"square": 1, "circle": 2}
RED, BLUE, GREEN, PINK = (220, 40, 40), (40, 60, 220), (40, 200, 60), (225, 50, 60)


def _scene(objs):
    """``objs`` = [(cx, cy, label, rgb), ...], 16 x 16 px squares; returns (image, Instances, kept indices)
    with one detection per object still visible (>= 20 px), in the order given."""
    image = np.full((H, W, 3), 110, np.uint8)
    masks = []
    for cx, cy, _, rgb in objs:
        m = np.zeros((H, W), bool)
        m[max(int(cy) - 8, 0):int(cy) + 8, max(int(cx) - 8, 0):int(cx) + 8] = True
        image[m] = rgb
        masks = [old & ~m for old in masks] + [m]
    keep = [k for k, m in enumerate(masks) if m.sum() >= 20]
    labels = [objs[k][2] for k in keep]
    inst = Instances.from_masks(np.stack([masks[k] for k in keep]) if keep else np.zeros((0, H, W), bool),
                                class_ids=[CLASSES[lab] for lab in labels], labels=labels, scores=[0.95] * len(keep))
    return image, inst, keep


def _track(frames, settings=TrackerSettings(), *, with_image=True):
    """Ids per frame per *object* (None where the object was not detected)."""
    tracker, out = MaskTracker(settings), []
    for objs in frames:
        image, inst, keep = _scene(objs)
        ids = tracker.update(inst, image=image if with_image else None).instances.extra[TRACK_IDS].tolist()
        row = [None] * len(objs)
        for k, tid in zip(keep, ids):
            row[k] = tid
        out.append(row)
    return out


def _ids_of(per_frame, k):
    return {row[k] for row in per_frame if len(row) > k and row[k] is not None and row[k] >= 0}


def test_color_descriptor_and_similarity():
    image, inst, _ = _scene([(40, 50, "square", RED), (120, 50, "square", BLUE), (60, 50, "square", RED)])
    d = [color_descriptor(image, inst.masks[k], 0, 0) for k in range(3)]
    assert all(abs(float(x.sum()) - 1.0) < 1e-5 for x in d)
    assert color_similarity(d[0], d[2]) > 0.99 and color_similarity(d[0], d[1]) < 0.05
    half = inst.masks[0] | inst.masks[1]  # one mask over a red and a blue square: in between against either
    mixed = color_descriptor(image, half, 0, 0)
    assert 0.5 < color_similarity(mixed, d[0]) < 0.9 and 0.5 < color_similarity(mixed, d[1]) < 0.9
    assert color_similarity(None, d[0]) == 1.0 and color_descriptor(image, np.zeros((H, W), bool), 0, 0) is None


def _away_and_back(color_back, label_back="square", x_back=60.0):
    """A square moves right, is gone for 40 frames (longer than a 10-frame buffer), comes back at ``x_back``."""
    there = [[(x, 50.0, "square", RED)] for x in np.arange(20.0, 60.0, 2.0)]
    back = [[(x, 50.0, label_back, color_back)] for x in np.arange(x_back, x_back + 40.0, 2.0)]
    return there + [[]] * 40 + back


def test_an_object_away_longer_than_the_buffer_gets_its_id_back_when_it_looks_the_same():
    settings = TrackerSettings(buffer_frames=10)
    ids = _track(_away_and_back(RED), settings)
    first, last = ids[5][0], ids[-1][0]
    assert first is not None and first >= 0 and last == first
    # controls: another colour, another class, no re-identification, or no image: a new id
    for frames, st, with_image in ((_away_and_back(BLUE), settings, True),
                                   (_away_and_back(RED, "circle"), settings, True),
                                   (_away_and_back(RED), TrackerSettings(buffer_frames=10, reid_frames=0), True),
                                   (_away_and_back(RED), settings, False)):
        ids = _track(frames, st, with_image=with_image)
        assert ids[-1][0] is not None and ids[-1][0] >= 0 and ids[-1][0] != ids[5][0]


def test_re_identification_needs_a_plausible_place():
    """The same colour and class, but back across the frame three frames after the 10-frame buffer: a new id."""
    frames = [[(x, 50.0, "square", RED)] for x in np.arange(20.0, 40.0, 2.0)] + [[]] * 13
    frames += [[(x, 50.0, "square", RED)] for x in np.arange(180.0, 150.0, -2.0)]
    ids = _track(frames, TrackerSettings(buffer_frames=10))
    assert ids[-1][0] is not None and ids[-1][0] not in (-1, ids[5][0])


def _bounce():
    """Two squares meet, the blue one passing behind the red one, and both turn back there (fully overlapping)."""
    xs = list(np.arange(40.0, 104.0, 4.0))
    xs += xs[::-1]
    return [[(200.0 - x, 50.0, "square", BLUE), (x, 50.0, "square", RED)] for x in xs]


def test_two_objects_of_one_class_that_meet_and_turn_back_keep_their_ids_by_colour():
    ids = _track(_bounce())
    red, blue = _ids_of(ids, 1), _ids_of(ids, 0)
    assert len(red) == 1 and len(blue) == 1 and red != blue
    # control: by motion alone each track runs on and ends on the other object
    ids = _track(_bounce(), with_image=False)
    assert ids[-1] != ids[1] and min(ids[1]) >= 0


def test_a_detection_seen_as_two_classes_starts_one_track():
    """Mask R-CNN's per-class NMS leaves one object as a square *and* a circle: one track, not a ghost."""
    def frame(x):
        image, inst, _ = _scene([(x, 50.0, "square", RED), (150.0, 50.0, "square", BLUE)])
        dup = Instances(boxes=inst.boxes[[0, 0, 1]], masks=inst.masks[[0, 0, 1]], scores=[0.95, 0.8, 0.9],
                        class_ids=[1, 2, 1], labels=("square", "circle", "square"), image_size=inst.image_size)
        return image, dup

    for settings, n_ids in ((TrackerSettings(), 2), (TrackerSettings(duplicate_cover=1.0), 3)):
        tracker, ids = MaskTracker(settings), set()
        for x in range(40, 80, 4):
            image, inst = frame(float(x))
            got = tracker.update(inst, image=image).instances.extra[TRACK_IDS]
            ids |= {int(t) for t in got if t >= 0}
        assert len(ids) == n_ids, settings
        assert bool(got[1] == -1) == (settings.duplicate_cover < 1.0) and got[0] >= 0 and got[2] >= 0


def test_one_mask_over_two_touching_objects_starts_no_track():
    """The detector adds a mask spanning two tracked objects side by side: not a third object."""
    for settings, n_ids in ((TrackerSettings(), 2), (TrackerSettings(duplicate_cover=1.0), 3)):
        tracker, ids = MaskTracker(settings), set()
        for x in range(40, 80, 4):
            image, inst, _ = _scene([(float(x), 50.0, "square", RED), (x + 16.0, 50.0, "square", BLUE)])
            both = inst.masks[0] | inst.masks[1]
            merged = Instances(boxes=np.concatenate([inst.boxes, [[x - 8, 42, x + 24, 58]]]),
                               masks=np.concatenate([inst.masks, both[None]]), scores=[0.95, 0.95, 0.8],
                               class_ids=[1, 1, 1], labels=("square",) * 3, image_size=inst.image_size)
            got = tracker.update(merged, image=image).instances.extra[TRACK_IDS]
            ids |= {int(t) for t in got if t >= 0}
        assert len(ids) == n_ids, settings


def test_overlapping_objects_are_not_duplicates():
    """Two objects, one half behind the other (mask IoU well under 0.5), both get their own track."""
    frames = [[(x, 50.0, "square", RED), (x + 9.0, 50.0, "square", BLUE)] for x in np.arange(40.0, 80.0, 3.0)]
    ids = _track(frames)
    assert len(_ids_of(ids, 0)) == 1 and len(_ids_of(ids, 1)) == 1 and _ids_of(ids, 0) != _ids_of(ids, 1)


def test_the_image_must_fit_the_instances():
    image, inst, _ = _scene([(40, 50, "square", RED)])
    with pytest.raises(UsageError, match="RGB uint8"):
        MaskTracker().update(inst, image=image[:50])
    with pytest.raises(UsageError, match="reid_thresh"):
        TrackerSettings(reid_thresh=0.0)


def test_a_class_flip_for_two_frames_starts_no_ghost_track():
    """The detector calls a tracked square a circle for two frames: those get no id (a ghost circle track
    would count twice), and the square keeps its id when it is called a square again."""
    labels = ["square"] * 8 + ["circle"] * 2 + ["square"] * 8
    frames = [[(40.0 + 3 * t, 50.0, lab, RED)] for t, lab in enumerate(labels)]
    for settings, ghost in ((TrackerSettings(), False), (TrackerSettings(duplicate_cover=1.0), True)):
        ids = _track(frames, settings)
        assert ids[7][0] >= 0 and ids[-1][0] == ids[7][0]
        assert (ids[9][0] >= 0) is ghost


def test_a_re_identified_object_counts_each_crossing_once():
    """Crosses ``in``, is gone longer than the buffer (its id ended), comes back and crosses ``out``:
    one id throughout, one count each way."""
    from masklab.tracking import Counter, CountLine

    there = [[(x, 50.0, "square", RED)] for x in np.arange(70.0, 130.0, 4.0)]
    back = [[(x, 50.0, "square", RED)] for x in np.arange(128.0, 60.0, -4.0)]
    tracker, counter, seen = MaskTracker(TrackerSettings(buffer_frames=10)), Counter(lines=(CountLine(100, 100, 100, 0),)), set()
    for t, objs in enumerate(there + [[]] * 30 + back):
        image, inst, _ = _scene(objs)
        up = tracker.update(inst, image=image)
        counter.update(up.instances, frame=t, time_s=t / 10, ended=up.ended)
        seen |= {int(i) for i in up.instances.extra[TRACK_IDS] if i >= 0}
    assert len(seen) == 1
    assert counter.line_counts("line") == {"in": {"total": 1, "by_class": {"square": 1}},
                                           "out": {"total": 1, "by_class": {"square": 1}}}
