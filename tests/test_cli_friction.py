"""A new user's first hour (issue 19): each friction point found by trying masklab as a new user would,
checked through the real command line (``masklab.cli.main``) with the shipped demo model."""

from __future__ import annotations

import csv
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from masklab.cli import main
from masklab.data.shapes import write_shapes


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """Three 128-px shapes scenes (what the demo model was trained on) in a COCO folder."""
    root = tmp_path_factory.mktemp("shapes")
    write_shapes(root / "set", n=3, size=128, seed=7)
    return root / "set"


@pytest.fixture
def elsewhere(tmp_path, monkeypatch) -> Path:
    """A working directory far from the repository (as after `pip install masklab`)."""
    cwd = tmp_path / "somewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def _err(capsys) -> str:
    return capsys.readouterr().err


@pytest.mark.slow
def test_demo_model_is_listed_and_works_by_name_from_any_folder(shapes, elsewhere, capsys):
    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    row = next(line for line in listing.splitlines() if line.startswith("shapes_demo"))
    assert "bundled" in row and "--model shapes_demo" in listing
    # by name, from a folder with no masklab/assets in sight; no --out: a new runs/segment-1
    assert main(["segment", str(shapes / "images"), "--model", "shapes_demo"]) == 0
    err = _err(capsys)
    out = elsewhere / "runs" / "segment-1"
    assert (out / "summary.csv").is_file() and f"results in {Path('runs') / 'segment-1'}" in err
    # one line per image: "000001.png: 2 circle, 1 square (0.41 s)"
    lines = [line for line in err.splitlines() if re.match(r"^\S+\.png: ", line)]
    assert len(lines) == 3
    pattern = re.compile(r"^\S+\.png: (\d+ (square|circle|triangle))(, \d+ (square|circle|triangle))* \(\d+\.\d\d s\)$")
    assert all(pattern.match(line) for line in lines), lines
    assert sum(int(n) for line in lines for n in re.findall(r"(\d+) (?:square|circle|triangle)", line)) > 0
    # a second run gets its own folder; -q drops the per-image lines but not where the results are
    assert main(["segment", str(shapes / "images"), "--model", "shapes_demo", "-q"]) == 0
    err = _err(capsys)
    assert (elsewhere / "runs" / "segment-2" / "summary.csv").is_file()
    assert not [line for line in err.splitlines() if re.match(r"^\S+\.png: ", line)]
    assert f"results in {Path('runs') / 'segment-2'}" in err


def test_models_json_lists_the_bundled_model(capsys):
    import json

    assert main(["models", "--json"]) == 0
    demo = next(c for c in json.loads(capsys.readouterr().out) if c["name"] == "shapes_demo")
    assert Path(demo["bundled"]).is_file() and demo["categories"][1:] == ["square", "circle", "triangle"]


def test_offline_message_names_the_demo_model(shapes, tmp_path, capsys):
    image = sorted((shapes / "images").glob("*.png"))[0]
    code = main(["segment", str(image), "--out", str(tmp_path / "o")])  # the default COCO model, offline
    err = _err(capsys)
    assert code == 3 and "MASKLAB_OFFLINE" in err and "--model shapes_demo" in err


@pytest.mark.slow
def test_wrong_architecture_hint_leads_somewhere(shapes, tmp_path, capsys):
    """Following the hint must work: "use --model small" failed the same way (4 classes, not 2)."""
    from masklab.models.zoo import bundled_model

    image = str(sorted((shapes / "images").glob("*.png"))[0])
    weights = str(bundled_model("shapes_demo"))
    for model in ("maskrcnn_resnet50_fpn", "small"):
        code = main(["segment", image, "--out", str(tmp_path / "o"), "--model", model, "--weights", weights])
        err = _err(capsys)
        assert code == 4, err
        hint = re.search(r"pass the file itself as the model: (--model .+?) \(no --weights\)", err)
        assert hint, err
        assert main(["segment", image, "--out", str(tmp_path / f"ok-{model}"), *shlex.split(hint.group(1))]) == 0
        _err(capsys)


def test_did_you_mean_for_models_and_classes(shapes, tmp_path, capsys):
    image = str(sorted((shapes / "images").glob("*.png"))[0])
    assert main(["segment", image, "--out", str(tmp_path / "o"), "--model", "shapes_dmeo"]) == 2
    err = _err(capsys)
    assert "did you mean 'shapes_demo'?" in err and "maskrcnn_resnet50_fpn_v2" in err and "small" in err
    assert main(["segment", image, "--out", str(tmp_path / "o"), "--model", "shapes_demo", "--classes", "cirle,square"]) == 2
    err = _err(capsys)
    assert "did you mean 'circle' for 'cirle'?" in err and "square, circle, triangle" in err


def test_empty_folder_names_the_folder_and_hints_recursive(tmp_path, capsys):
    empty = tmp_path / "photos"
    (empty / "2024").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(empty / "2024" / "a.png")
    assert main(["segment", str(empty), "--out", str(tmp_path / "o")]) == 2
    err = _err(capsys)
    assert str(empty) in err and "-r" in err and "subfolders" in err


def test_a_file_that_is_not_weights_gets_masklabs_message(shapes, tmp_path, capsys):
    image = sorted((shapes / "images").glob("*.png"))[0]
    fake = tmp_path / "model.pth"
    fake.write_bytes(image.read_bytes())  # a PNG named .pth
    pickled = tmp_path / "object.pth"
    import torch

    torch.save({"model": {"w": torch.ones(1)}, "extra": Path("x")}, pickled)  # a pickled object besides tensors
    for path, words in ((fake, "is not a PyTorch weights file"), (pickled, "holds pickled Python objects")):
        assert main(["segment", str(image), "--out", str(tmp_path / "o"), "--model", str(path)]) == 4
        err = _err(capsys)
        assert words in err and "weights_only=False" not in err and "state_dict" in err, err


@pytest.mark.slow
def test_summary_csv_columns_are_stable(shapes, tmp_path, capsys):
    """Every model class in model order, found or not; the --classes list in model order."""
    blank = tmp_path / "blank"
    blank.mkdir()
    Image.fromarray(np.full((128, 128, 3), 127, np.uint8)).save(blank / "grey.png")

    def header(*args: str) -> list[str]:
        out = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"
        assert main(["segment", *args, "--out", str(out), "--model", "shapes_demo", "-q"]) == 0
        with open(out / "summary.csv", newline="") as f:
            return next(csv.reader(f))

    every = ["image", "status", "instances", "square", "circle", "triangle", "error"]
    assert header(str(blank)) == every  # nothing found: the columns are there all the same
    assert header(str(shapes / "images")) == every
    assert header(str(shapes / "images"), "--classes", "triangle,square") == ["image", "status", "instances", "square", "triangle", "error"]
    _err(capsys)


@pytest.mark.slow
def test_eval_takes_a_dataset_folder_like_train(shapes, tmp_path, capsys):
    assert main(["eval", "--data", str(shapes), "--model", "shapes_demo", "--no-plots", "--out", str(tmp_path / "e")]) == 0
    out = capsys.readouterr().out
    assert "mask" in out.lower() and (tmp_path / "e" / "eval.json").is_file()


def test_help_lists_every_exit_code(capsys):
    from masklab.errors import UsageError, WeightsMismatchError, WeightsUnavailableError

    for argv in (["--help"], ["segment", "--help"], ["train", "--help"], ["eval", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        text = capsys.readouterr().out
        table = text[text.index("exit codes:"):]
        codes = [int(m) for m in re.findall(r"^\s+(\d+)\s", table, re.M)]
        assert codes == [0, 1, UsageError.exit_code, WeightsUnavailableError.exit_code, WeightsMismatchError.exit_code, 130]
        assert codes[2:5] == [2, 3, 4]


@pytest.mark.slow
def test_serve_missing_weights_stop_at_once_and_ready_is_logged(capsys):
    """README: missing weights stop `serve` before it listens (exit 3, the reason on stderr); a model that
    loads says so on stderr (the log record existed, but no handler showed INFO)."""
    pytest.importorskip("fastapi")
    import logging

    from masklab.cli.serve import log_to_stderr
    from masklab.serve.service import Service
    from masklab.serve.settings import ServeSettings
    from masklab.settings import InferenceSettings

    assert main(["serve", "--model", "maskrcnn_resnet50_fpn_v2", "--port", "0"]) == 3
    assert "not cached" in _err(capsys)
    handler = log_to_stderr()
    try:
        from masklab import Segmenter

        inference = InferenceSettings(model="shapes_demo", device="cpu")
        svc = Service(ServeSettings(inference=inference), lambda: Segmenter(settings=inference))
        svc.load()
        assert svc.segmenter is not None and svc.error is None
        assert re.search(r"INFO: +masklab.serve: model shapes_small loaded and warm in [\d.]+ s; ready", _err(capsys))
    finally:
        logging.getLogger("masklab").removeHandler(handler)
        logging.getLogger("masklab").setLevel(logging.NOTSET)


#: top-level modules of the optional extras (pyproject's [project.optional-dependencies]) and of the
#: interop libraries [dev] adds: none may be needed by the demo, which `make demo` runs on the core install
EXTRAS_MODULES = (
    "matplotlib", "onnx", "onnxruntime", "nncf", "fastapi", "starlette", "uvicorn", "multipart", "python_multipart",
    "prometheus_client", "ray", "pyarrow", "filterpy", "scipy", "motmetrics", "nbclient", "nbformat", "ipykernel",
    "httpx", "schemathesis", "playwright", "supervision", "fiftyone", "labelme", "ultralytics", "pandas",
    "label_studio_converter", "label_studio_sdk",
)

_BLOCKED_DEMO = """
import importlib.abc, importlib.machinery, sys
BLOCK = set(sys.argv[2].split(","))
class Refuse(importlib.abc.Loader):  # a probe (find_spec) sees the module; importing it fails
    def create_module(self, spec):
        raise ModuleNotFoundError(f"{spec.name} is an extra; the demo must run on the core install")
    def exec_module(self, module):
        pass
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCK:
            return importlib.machinery.ModuleSpec(name, Refuse())
        return None
sys.meta_path.insert(0, Block())
from masklab.demo import main
sys.exit(main(["--out", sys.argv[1]]))
"""


@pytest.mark.slow
def test_demo_runs_on_the_core_install(tmp_path):
    """`make demo` installs only `pip install -e .`: the demo imports nothing from an extra (offline here:
    it falls back to shapes_demo, the path a fresh machine without the COCO weights takes)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "MASKLAB_OFFLINE": "1", "MASKLAB_HOME": str(tmp_path / "home")}
    p = subprocess.run([sys.executable, "-c", _BLOCKED_DEMO, str(tmp_path / "demo"), ",".join(EXTRAS_MODULES)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "is an extra" not in p.stderr and "offline demo model" in p.stderr
    assert len(list((tmp_path / "demo").glob("shapes_*.json"))) == 3  # one record per generated scene
