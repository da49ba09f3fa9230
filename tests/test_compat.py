"""The matterport tutorial API (masklab.compat.mrcnn) and the tutorial notebook run as written."""

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL, make_scene

from masklab.compat.mrcnn import coco, utils, visualize
from masklab.compat.mrcnn import model as modellib
from masklab.compat.mrcnn.config import Config
from masklab.errors import MasklabError, UsageError
from masklab.models.categories import COCO_MRCNN
from masklab.structures.instances import Instances

ROOT = Path(__file__).resolve().parent.parent


class SmallConfig(coco.CocoConfig):
    """The v2_segmenter fixture's settings, in matterport's names (torchvision's NMS 0.5, 100 detections)."""

    GPU_COUNT = 1
    IMAGES_PER_GPU = 1
    IMAGE_MIN_DIM = SMALL["min_size"]
    IMAGE_MAX_DIM = SMALL["max_size"]
    DETECTION_MIN_CONFIDENCE = 0.0
    DETECTION_NMS_THRESHOLD = 0.5


def test_config_display_and_derived_values(capsys):
    config = SmallConfig()
    assert config.BATCH_SIZE == 1 and config.NUM_CLASSES == 81 and config.NAME == "coco"
    assert list(config.IMAGE_SHAPE) == [384, 384, 3] and config.IMAGE_META_SIZE == 93
    config.display()
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "Configurations:"
    rows = dict(line.split(None, 1) for line in lines[2:] if line.strip())
    assert rows["IMAGE_MIN_DIM"] == "256" and rows["BACKBONE"] == "resnet101" and rows["NAME"] == "coco"
    assert list(rows) == sorted(rows)  # alphabetical, as matterport prints them
    assert Config().BATCH_SIZE == 2 and coco.CocoConfig().BATCH_SIZE == 2


class TinyConfig(SmallConfig):
    IMAGE_MIN_DIM = 128
    IMAGE_MAX_DIM = 192
    DETECTION_MAX_INSTANCES = 10  # fewer masks to paste: the CPU cost of detect() is mostly per object


def test_model_detect_matches_the_segmenter(small_weights, capsys):
    from masklab import Segmenter

    model = modellib.MaskRCNN(mode="inference", model_dir="logs", config=TinyConfig())
    with pytest.raises(UsageError, match="load_weights"):
        model.detect([make_scene()])
    model.load_weights(small_weights, by_name=True)  # a MobileNetV3 file: recognised from its keys
    assert model.segmenter.spec.arch == "maskrcnn_mobilenet_v3_fpn"
    assert model.class_names == ("BG", "class_1", "class_2", "class_3")
    images = [make_scene(seed=5)]
    r = model.detect(images, verbose=1)[0]
    assert "Processing 1 images" in capsys.readouterr().out
    seg = Segmenter(small_weights, device="cpu", score_thresh=0.0, nms_thresh=0.5, max_detections=10, min_size=128, max_size=192)
    expected = seg.detect(images)[0]
    assert set(r) == {"rois", "masks", "class_ids", "scores"}
    assert r["masks"].shape[:2] == images[0].shape[:2] and r["masks"].shape[-1] == len(r["scores"]) > 0
    for key in r:
        assert r[key].dtype == expected[key].dtype and (r[key] == expected[key]).all()
    with pytest.raises(UsageError, match="BATCH_SIZE"):
        model.detect(images * 2)


def test_load_weights_refuses_bad_files(tmp_path):
    model = modellib.MaskRCNN(mode="inference", model_dir=str(tmp_path), config=SmallConfig())
    import h5py

    fake = tmp_path / "mask_rcnn_coco.h5"
    with h5py.File(fake, "w") as f:
        f.attrs["note"] = "not weights"
    with pytest.raises(MasklabError) as e:
        model.load_weights(fake, by_name=True)
    assert ".h5" in str(e.value) or "h5" in str(e.value).lower()
    with pytest.raises(UsageError, match="does not exist"):
        model.load_weights(tmp_path / "missing.pth")
    with pytest.raises(UsageError, match="inference"):
        modellib.MaskRCNN(mode="training", model_dir=str(tmp_path), config=SmallConfig())


def _instances_for_display():
    h, w = 100, 200
    masks = np.zeros((h, w, 2), bool)
    masks[10:40, 10:40, 0] = True
    masks[50:90, 100:160, 1] = True
    rois = utils.extract_bboxes(masks)
    return np.full((h, w, 3), 100, np.uint8), rois, masks, np.array([16, 16]), np.array([0.9, 0.8])  # 16: "cat"


def test_extract_bboxes_is_matterports_convention():
    _, rois, _, _, _ = _instances_for_display()
    assert rois.tolist() == [[10, 10, 40, 40], [50, 100, 90, 160]]  # y1, x1, y2, x2 with y2/x2 exclusive
    assert rois.dtype == np.int32


def test_display_instances_draws_what_the_visualiser_draws():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from masklab.visualize import InstanceVisualizer

    image, rois, masks, class_ids, scores = _instances_for_display()
    colors = [(1.0, 0.0, 0.0), (0.0, 0.0, 1.0)]
    fig, ax = plt.subplots()
    visualize.display_instances(image, rois, masks, class_ids, list(COCO_MRCNN), scores, ax=ax, colors=colors)
    shown = ax.get_images()[0].get_array()
    assert shown.shape == image.shape
    assert tuple(shown[25, 25]) == (178, 50, 50) and tuple(shown[75, 130]) == (50, 50, 178)  # 50 % colour fills
    assert (shown[95, 5] == 100).all()  # background untouched
    # ... and the whole picture is the instance visualiser's: boxes from the rois (y1, x1, y2, x2 ->
    # x1, y1, x2, y2), the colours scaled to 0..255, matterport's "label score" captions.
    inst = Instances(boxes=rois[:, [1, 0, 3, 2]].astype(np.float32), masks=masks.transpose(2, 0, 1), scores=scores,
                     class_ids=class_ids, labels=["cat", "cat"], image_size=image.shape[:2])
    expected = InstanceVisualizer(alpha=0.5).annotate(
        image, inst, colors=[(255, 0, 0), (0, 0, 255)], captions=["cat 0.900", "cat 0.800"]
    )
    assert (shown == expected).all()
    plt.close(fig)
    with pytest.raises(ValueError, match="agree on N"):
        visualize.display_instances(image, rois, masks[..., :1], class_ids, list(COCO_MRCNN), scores, ax=ax)


def test_display_top_masks_random_colors_apply_mask(capsys):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image, rois, masks, class_ids, _ = _instances_for_display()
    plt.close("all")
    visualize.display_top_masks(image, masks, class_ids, list(COCO_MRCNN), limit=2)
    axes = plt.gcf().axes
    assert [a.get_title() for a in axes] == ["H x W=100x200", "cat", "-"]
    plt.close("all")
    colors = visualize.random_colors(5)
    assert len(colors) == 5 and all(0 <= v <= 1 for c in colors for v in c)
    img = image.astype(np.float64)
    out = visualize.apply_mask(img, masks[..., 0].astype(np.uint8), (1.0, 0.0, 0.0), alpha=0.5)
    assert out is img and out[15, 15].tolist() == [177.5, 50.0, 50.0] and out[0, 0].tolist() == [100.0] * 3
    fig, ax = plt.subplots()
    visualize.display_instances(image, np.zeros((0, 4)), np.zeros((100, 200, 0), bool), np.zeros(0, int), list(COCO_MRCNN), ax=ax)
    assert "No instances to display" in capsys.readouterr().out
    plt.close(fig)


def test_utils_reexports_the_evaluation_helpers():
    pytest.importorskip("masklab.evaluation.matterport_utils")
    masks = np.zeros((20, 20, 1), bool)
    masks[2:8, 2:8, 0] = True
    assert utils.compute_overlaps_masks(masks, masks)[0, 0] == pytest.approx(1.0)
    assert callable(utils.compute_ap) and callable(utils.compute_ap_range) and callable(utils.compute_matches)


def test_skimage_imread(tmp_path):
    from PIL import Image

    from masklab.compat import skimage

    Image.fromarray(make_scene(50, 60)).save(tmp_path / "x.png")
    arr = skimage.io.imread(str(tmp_path / "x.png"))
    assert arr.shape == (50, 60, 3) and arr.dtype == np.uint8 and (arr == make_scene(50, 60)).all()


@pytest.mark.slow
def test_tutorial_notebook_runs_as_written(v2_weights, monkeypatch):
    """Execute examples/tutorial.ipynb with test weights; small inputs are set by one injected cell
    (class attributes of CocoConfig), so the notebook file itself is the tutorial."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "examples" / "tutorial.ipynb", as_version=4)
    sources = [c.source for c in nb.cells if c.cell_type == "code"]
    assert "from masklab.compat.mrcnn import visualize" in sources[0] and "config.display()" in sources[1]
    assert "model.load_weights(COCO_MODEL_PATH, by_name=True)" in sources[2]
    setup = nbformat.v4.new_code_cell(
        "coco.CocoConfig.IMAGE_MIN_DIM, coco.CocoConfig.IMAGE_MAX_DIM = 128, 192\n"
        "coco.CocoConfig.DETECTION_MIN_CONFIDENCE = 0.0  # random weights score low\n"
        "coco.CocoConfig.DETECTION_MAX_INSTANCES = 10"
    )
    first_code = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    nb.cells.insert(first_code + 1, setup)
    monkeypatch.setenv("MASKLAB_TUTORIAL_WEIGHTS", str(v2_weights))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("MASKLAB_NUM_THREADS", os.environ.get("MASKLAB_NUM_THREADS", "2"))
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "examples")}}).execute()

    def text(cell):
        return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "IMAGE_MIN_DIM                  128" in text(code[2])  # config.display()
    detect = code[5]
    assert "Processing 1 images" in text(detect)
    assert any("image/png" in o.get("data", {}) for o in detect.outputs)  # display_instances drew a figure
    count = text(code[6])
    n = int(count.split("objects found:")[1].split()[0])
    assert n > 0 and f"(300, 451, {n})" in count  # chelsea.jpg is 451 x 300
