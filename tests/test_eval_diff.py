"""``masklab eval --diff``: ground truth vs prediction pictures, coloured by outcome, linked from the report."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from masklab.cli import main


def _square(x: int, y: int, s: int) -> list[list[float]]:
    return [[x, y, x + s, y, x + s, y + s, x, y + s]]


def _dataset(tmp_path):
    """One black 64x64 image: a at (5, 5), b at (35, 5), a at (5, 40), each 20x20; predictions: a TP on the
    first, an 'a' on the b object (wrong class), an FP in empty space, nothing on the third (missed)."""
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "img.png")
    anns = [{"id": k + 1, "image_id": 1, "category_id": c, "segmentation": _square(x, y, 20), "bbox": [x, y, 20, 20],
             "area": 400, "iscrowd": 0} for k, (c, x, y) in enumerate([(1, 5, 5), (2, 35, 5), (1, 5, 40)])]
    gt = {"images": [{"id": 1, "file_name": "img.png", "height": 64, "width": 64}], "annotations": anns,
          "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    preds = [{"image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 20], "score": 0.9},
             {"image_id": 1, "category_id": 1, "bbox": [36, 6, 19, 19], "score": 0.8},
             {"image_id": 1, "category_id": 2, "bbox": [42, 42, 14, 14], "score": 0.7}]
    (tmp_path / "preds.json").write_text(json.dumps(preds))


def _mean(a: np.ndarray, x: int, y: int, s: int, f: int = 4, top: int = 24) -> np.ndarray:
    """Mean RGB inside the central part of the square at (x, y, s) in original pixels (picture enlarged f x)."""
    return a[top + (y + 5) * f : top + (y + s - 5) * f, (x + 5) * f : (x + s - 5) * f].reshape(-1, 3).mean(0)


def test_eval_diff_colours_outcomes_and_links_them(tmp_path):
    _dataset(tmp_path)
    out = tmp_path / "ev"
    rc = main(["eval", "--data", str(tmp_path / "gt.json"), "--predictions", str(tmp_path / "preds.json"),
               "--diff", "--no-plots", "--out", str(out)])
    assert rc == 0
    report = (out / "report.md").read_text()
    assert "| 1 | 1 | 1 | 1 | 1 | [diff/1.png](diff/1.png) |" in report
    a = np.asarray(Image.open(out / "diff" / "1.png").convert("RGB")).astype(float)
    assert a.shape == (24 + 64 * 4, 64 * 4, 3)  # legend strip + the 64x64 image enlarged 4x
    tp, confused, fp, missed = _mean(a, 5, 5, 20), _mean(a, 36, 6, 19), _mean(a, 42, 42, 14), _mean(a, 5, 40, 20)
    assert tp[1] > 2 * max(tp[0], tp[2])  # green
    assert confused[0] > confused[1] > 2 * confused[2]  # orange
    assert fp[0] > 3 * max(fp[1], fp[2])  # red
    assert missed[2] > 2 * max(missed[0], missed[1])  # blue
    empty = a[24 + 30 * 4 : 24 + 36 * 4, 28 * 4 : 32 * 4]
    assert empty.max() == 0  # background stays black (dimmed)


def test_eval_diff_without_image_files_notes_it(tmp_path, capsys):
    _dataset(tmp_path)
    (tmp_path / "img.png").unlink()
    out = tmp_path / "ev"
    rc = main(["eval", "--data", str(tmp_path / "gt.json"), "--predictions", str(tmp_path / "preds.json"),
               "--diff", "--no-plots", "--out", str(out)])
    assert rc == 0  # the metrics need no pixels; the missing picture is reported
    assert "not drawn" in (out / "report.md").read_text() and "not drawn" in capsys.readouterr().err
    assert not (out / "diff" / "1.png").exists()
