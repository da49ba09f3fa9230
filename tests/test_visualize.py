"""Visualisers: rendered pixels checked style by style."""

import numpy as np
import pytest
from conftest import make_scene

from masklab.errors import UsageError
from masklab.structures.instances import Instances
from masklab.visualize import STYLES, get_visualizer, render


def _scene_instances(h=120, w=160):
    """Two 'cat' squares and one 'dog' rectangle, laid out for (120, 160) and scaled to (h, w)."""
    m = np.zeros((3, h, w), bool)
    sy, sx = h / 120, w / 160
    for k, (y0, y1, x0, x1) in enumerate([(20, 60, 10, 50), (20, 60, 70, 110), (80, 110, 20, 140)]):
        m[k, int(y0 * sy) : int(y1 * sy), int(x0 * sx) : int(x1 * sx)] = True
    return Instances.from_masks(m, class_ids=[17, 17, 18], labels=["cat", "cat", "dog"], scores=[0.9, 0.8, 0.7])


def _colour_inside(original, drawn, mask):
    """The mean colour shift drawn - original over the mask's interior (its outline cut away)."""
    import cv2

    inner = cv2.erode(mask.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    return drawn[inner].astype(float).mean(0) - original[inner].astype(float).mean(0)


def test_splash_greys_the_background_and_keeps_the_objects():
    img = make_scene(120, 160)
    inst = _scene_instances()
    out = get_visualizer("splash").annotate(img, inst)
    fg = inst.masks.any(0)
    assert out.shape == img.shape and out.dtype == np.uint8
    bg = out[~fg]
    assert (bg[:, 0] == bg[:, 1]).all() and (bg[:, 1] == bg[:, 2]).all()
    assert (out[fg] == img[fg]).all()
    assert not (img[~fg][:, 0] == img[~fg][:, 1]).all()  # the input background was coloured
    only_dogs = get_visualizer("splash", classes=["dog"]).annotate(img, inst)
    assert (only_dogs[inst.masks[2]] == img[inst.masks[2]]).all()
    cat = only_dogs[inst.masks[0]]
    assert (cat[:, 0] == cat[:, 2]).all()


def test_instance_gives_two_objects_of_one_class_different_colours():
    img = np.full((120, 160, 3), 128, np.uint8)
    inst = _scene_instances()
    out = get_visualizer("instance", captions=False, boxes=False).annotate(img, inst)
    a = _colour_inside(img, out, inst.masks[0])
    b = _colour_inside(img, out, inst.masks[1])
    assert np.abs(a - b).max() > 20
    import cv2

    near = cv2.dilate(inst.masks.any(0).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    assert (out[~near] == 128).all()  # no boxes/captions: only fills and their 2 px outlines are drawn
    again = get_visualizer("instance", captions=False, boxes=False).annotate(img, inst)
    assert (again == out).all()  # stable colours for a given seed


@pytest.mark.parametrize("alpha", [0.0, 0.35, 0.5, 1.0])
def test_instance_fill_is_the_blend_formula_pixel_for_pixel_and_cropped_masks_draw_the_same(alpha):
    import cv2

    from masklab.visualize._draw import instance_colors

    img = make_scene(120, 160)  # textured: every channel value differs across the objects
    inst = _scene_instances()
    vis = get_visualizer("instance", captions=False, boxes=False, alpha=alpha)
    out = vis.annotate(img, inst)
    cols = instance_colors(len(inst)).astype(np.float64)
    for i, m in enumerate(inst.masks):  # the three masks do not overlap: each interior has one blend
        inner = cv2.erode(m.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
        want = img[inner] * (1 - alpha) + cols[i] * alpha  # float: ties (x.5) may round either way
        assert inner.sum() > 100 and np.abs(out[inner] - want).max() <= 0.5 + 1e-4
    assert (vis.annotate(img, inst.cropped()) == out).all()


def test_semantic_gives_one_class_one_colour_and_a_legend():
    img = np.full((120, 160, 3), 128, np.uint8)
    inst = _scene_instances()
    out = get_visualizer("semantic", legend=False).annotate(img, inst)
    cat1, cat2, dog = (_colour_inside(img, out, inst.masks[i]) for i in range(3))
    assert np.abs(cat1 - cat2).max() < 1e-6
    assert np.abs(cat1 - dog).max() > 20
    with_legend = get_visualizer("semantic").annotate(img, inst)
    corner = with_legend[:30, :60]
    assert (corner != out[:30, :60]).any()  # the legend is drawn top-left


def test_captions_stay_inside_the_image():
    def caption_pixels(y0, x0):
        img = np.zeros((60, 200, 3), np.uint8)
        m = np.zeros((1, 60, 200), bool)
        m[0, y0 : y0 + 10, x0 : x0 + 10] = True
        inst = Instances.from_masks(m, class_ids=[1], labels=["person"], scores=[0.5])
        out = get_visualizer("instance", boxes=False, alpha=0.0).annotate(img, inst)
        return (out > 120).all(-1)  # white caption text, anti-aliased edges included (nothing else is grey-white here)

    middle = caption_pixels(25, 60)
    assert middle.sum() > 20
    for y0, x0 in ((50, 190), (0, 0), (0, 190), (50, 0)):  # objects in each corner
        text = caption_pixels(y0, x0)
        # the whole caption is drawn: as many text pixels as in the middle, none cut off at an edge
        assert text.sum() == middle.sum()


def test_blur_changes_the_background_only():
    img = make_scene(120, 160, seed=3)
    inst = _scene_instances()
    out = get_visualizer("blur").annotate(img, inst)
    fg = inst.masks.any(0)
    assert (out[fg] == img[fg]).all()
    assert np.abs(out[~fg].astype(int) - img[~fg].astype(int)).mean() > 5
    # the blurred background is smoother: smaller neighbour differences
    assert np.abs(np.diff(out[~fg].astype(int), axis=0)).mean() < np.abs(np.diff(img[~fg].astype(int), axis=0)).mean()
    dogs_only = get_visualizer("blur", classes=["dog"]).annotate(img, inst)
    assert (dogs_only[inst.masks[2]] == img[inst.masks[2]]).all()
    assert (dogs_only[inst.masks[0]] != img[inst.masks[0]]).any()  # the cats are background now


def test_outline_draws_contours_only():
    img = np.full((120, 160, 3), 128, np.uint8)
    inst = _scene_instances()
    out = get_visualizer("outline").annotate(img, inst)
    changed = (out != img).any(-1)
    assert changed[20, 30] and changed[40, 10]  # edges of the first square
    assert not changed[40, 30] and not changed[5, 5]  # inside and outside untouched


def test_every_style_handles_no_instances_and_side_by_side():
    img = make_scene(50, 70)
    empty = Instances.empty((50, 70))
    # With nothing detected, every pixel is background: each style shows what it does to background.
    grey = np.round(img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.uint8)
    expected = {
        "instance": img,  # nothing to fill, outline or caption
        "semantic": img,  # and no legend without classes
        "outline": img,
        "splash": np.repeat(grey[..., None], 3, axis=2),  # all of it greyed (ITU-R 601 luma)
    }
    assert set(expected) | {"blur"} == set(STYLES)  # a new style needs its own expectation here
    for style in STYLES:
        out = get_visualizer(style).annotate(img, empty)
        assert out.shape == img.shape and out.dtype == np.uint8, style
        if style == "blur":  # all of it blurred: changed, and smoother than the input
            assert np.abs(out.astype(int) - img.astype(int)).mean() > 5
            assert np.abs(np.diff(out.astype(int), axis=1)).mean() < np.abs(np.diff(img.astype(int), axis=1)).mean()
        else:
            assert (out == expected[style]).all(), style
    pair = render(img, _scene_instances(50, 70), ("instance", "semantic"))
    assert pair.shape[1] == 2 * 70 + 4 and pair.shape[0] > 50  # two panels, a gap, a title strip
    assert (pair[-50:, :70] == get_visualizer("instance").annotate(img, _scene_instances(50, 70))).all()
    assert (pair[-50:, 74:] == get_visualizer("semantic").annotate(img, _scene_instances(50, 70))).all()


def test_unknown_style_is_a_usage_error():
    with pytest.raises(UsageError, match="sparkles"):
        get_visualizer("sparkles")


def test_plot_shows_the_overlay_inline():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = make_scene(120, 160)
    inst = _scene_instances()
    from masklab.visualize import plot

    ax = plot(img, inst, style="semantic")
    assert (ax.get_images()[0].get_array() == get_visualizer("semantic").annotate(img, inst)).all()
    plt.close("all")


def test_captions_shrink_on_small_images_only():
    from masklab.visualize._draw import draw_caption

    def caption_size(side):
        x0, y0, x1, y1 = draw_caption(np.zeros((side, side, 3), np.uint8), "ellipse 0.99", side // 2, side // 2)
        return x1 - x0, y1 - y0

    big, medium, small, tiny = caption_size(800), caption_size(400), caption_size(128), caption_size(40)
    assert big == medium  # full size from 400 px up
    assert small[0] < 0.75 * big[0] and small[1] < big[1]  # a third smaller on a 128-px crop
    assert tiny == small  # and no smaller than that: below it Hershey text stops being legible
