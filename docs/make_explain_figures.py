"""Regenerate the README's "How it works" pictures: a real run of the shipped demo model on a generated scene.

    python docs/make_explain_figures.py      # writes the three pictures the README shows, docs/how_it_works/*.png

COCO weights cannot be downloaded offline, so the model is masklab's demo model (MobileNetV3 FPN trained
on synthetic squares, circles and triangles at 128 px) and the image a 160x144 shapes scene (seed 1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from masklab import Segmenter
from masklab.data.shapes import random_scene
from masklab.explain import explain_to

ROOT = Path(__file__).resolve().parents[1]
README_PICTURES = ("4_rpn", "5_roi_align", "7_masks")


def main() -> None:
    seg = Segmenter(ROOT / "masklab" / "assets" / "shapes_small.safetensors", device="cpu")
    image = random_scene(np.random.default_rng(1), size=160).image[:144].copy()
    result = explain_to(seg, image, out=ROOT / "docs" / "how_it_works")
    for path in [result.html, result.counts, *result.paths]:
        if path.stem not in README_PICTURES:
            path.unlink()
    print("\n".join(str(result.out.relative_to(ROOT) / f"{name}.png") for name in README_PICTURES))


if __name__ == "__main__":
    main()
