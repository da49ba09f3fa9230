"""matterport's ``mrcnn.visualize`` with the original names and argument orders, drawn by masklab's
visualisers and shown with matplotlib (``pip install 'masklab[plot]'``).
"""

from __future__ import annotations

import colorsys
import random
from collections.abc import Sequence

import numpy as np

from masklab.structures.instances import Instances

__all__ = ["random_colors", "apply_mask", "display_instances", "display_images", "display_top_masks"]


def _plt():
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the environment
        from masklab.errors import MissingDependencyError

        raise MissingDependencyError("mrcnn.visualize needs matplotlib: pip install 'masklab[plot]'") from e
    return plt


def random_colors(N: int, bright: bool = True) -> list[tuple[float, float, float]]:
    """``N`` RGB colours with floats in [0, 1]: evenly spaced hues, shuffled (``random``'s state)."""
    brightness = 1.0 if bright else 0.7
    colors = [colorsys.hsv_to_rgb(i / max(N, 1), 1, brightness) for i in range(N)]
    random.shuffle(colors)
    return colors


def apply_mask(image: np.ndarray, mask: np.ndarray, color: Sequence[float], alpha: float = 0.5) -> np.ndarray:
    """Blend ``color`` (RGB floats in [0, 1]) into ``image`` (H, W, 3) where ``mask == 1``; in place,
    and returned, as matterport does."""
    for c in range(3):
        image[:, :, c] = np.where(mask == 1, image[:, :, c] * (1 - alpha) + alpha * color[c] * 255, image[:, :, c])
    return image


def _instances(image, boxes, masks, class_ids, class_names, scores) -> Instances:
    boxes, masks, class_ids = np.asarray(boxes), np.asarray(masks), np.asarray(class_ids)
    n = boxes.shape[0]
    if masks.ndim != 3 or masks.shape[-1] != n or class_ids.shape[0] != n:
        raise ValueError(
            f"display_instances: boxes (N, 4), masks (H, W, N) and class_ids (N,) must agree on N; "
            f"found {boxes.shape}, {masks.shape}, {class_ids.shape}"
        )
    h, w = image.shape[:2]
    return Instances(
        boxes=boxes.reshape(-1, 4)[:, [1, 0, 3, 2]].astype(np.float32),  # y1, x1, y2, x2 -> x1, y1, x2, y2
        masks=masks.transpose(2, 0, 1).astype(bool),
        scores=np.zeros(n, np.float32) if scores is None else scores,
        class_ids=class_ids,
        labels=[class_names[int(c)] for c in class_ids],
        image_size=(h, w),
    )


def display_instances(
    image,
    boxes,
    masks,
    class_ids,
    class_names,
    scores=None,
    title="",
    figsize=(16, 16),
    ax=None,
    show_mask=True,
    show_bbox=True,
    colors=None,
    captions=None,
):
    """Show the detections on ``image`` (matterport's arguments).

    ``boxes``: (N, 4) ``y1, x1, y2, x2``; ``masks``: (H, W, N); ``class_ids``: (N,) indexing
    ``class_names``; ``scores``: (N,) or None; ``colors``: N RGB float triples in [0, 1] (random by
    default); ``captions``: N strings instead of ``"label score"``. Without ``ax`` a figure is made and shown.
    """
    from masklab.visualize import InstanceVisualizer

    inst = _instances(image, boxes, masks, class_ids, class_names, scores)
    n = len(inst)
    if not n:
        print("\n*** No instances to display *** \n")
    plt = _plt()
    auto_show = ax is None
    if auto_show:
        _, ax = plt.subplots(1, figsize=figsize)
    colors = colors or random_colors(n)
    if captions is None:
        captions = [f"{lab} {s:.3f}" if scores is not None else lab for lab, s in zip(inst.labels, inst.scores)]
    vis = InstanceVisualizer(alpha=0.5, masks=show_mask, boxes=show_bbox, captions=True)
    drawn = vis.annotate(
        np.asarray(image).astype(np.uint8), inst, colors=[[255 * v for v in c[:3]] for c in colors[:n]], captions=captions
    )
    h, w = drawn.shape[:2]
    ax.set_ylim(h + 10, -10)
    ax.set_xlim(-10, w + 10)
    ax.axis("off")
    ax.set_title(title)
    ax.imshow(drawn)
    if auto_show:
        plt.show()


def display_images(images, titles=None, cols=4, cmap=None, norm=None, interpolation=None):
    """Show ``images`` in a grid with ``titles`` (matterport's helper)."""
    plt = _plt()
    titles = titles if titles is not None else [""] * len(images)
    rows = len(images) // cols + 1
    plt.figure(figsize=(14, 14 * rows // cols))
    for i, (image, title) in enumerate(zip(images, titles), start=1):
        plt.subplot(rows, cols, i)
        plt.title(title, fontsize=9)
        plt.axis("off")
        plt.imshow(np.asarray(image).astype(np.uint8), cmap=cmap, norm=norm, interpolation=interpolation)
    plt.show()


def display_top_masks(image, mask, class_ids, class_names, limit=4):
    """Show ``image`` and the masks of its ``limit`` largest classes (``mask``: (H, W, N))."""
    mask, class_ids = np.asarray(mask), np.asarray(class_ids)
    to_display = [image]
    titles = [f"H x W={image.shape[0]}x{image.shape[1]}"]
    unique = np.unique(class_ids)
    area = [np.sum(mask[:, :, np.where(class_ids == i)[0]]) for i in unique]
    top = [int(c) for c, a in sorted(zip(unique, area), key=lambda r: r[1], reverse=True) if a > 0]
    for i in range(limit):
        class_id = top[i] if i < len(top) else -1
        m = mask[:, :, np.where(class_ids == class_id)[0]]
        m = np.sum(m * np.arange(1, m.shape[-1] + 1), -1)  # each instance of the class its own shade
        to_display.append(m)
        titles.append(class_names[class_id] if class_id != -1 else "-")
    display_images(to_display, titles=titles, cols=limit + 1, cmap="Blues_r")
