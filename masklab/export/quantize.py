"""int8: NNCF post-training quantisation of the exported OpenVINO core (:mod:`masklab.export`).

    >>> from masklab.export.quantize import quantize_ir                       # doctest: +SKIP
    >>> quantize_ir("core.xml", images, out="core-int8.xml")                  # images: RGB uint8 (H, W, 3)

The fp32 IR ``masklab export --format openvino`` writes (``compress_to_fp16=False``) is calibrated on the
user's images: NNCF runs them through the model, records the range of every quantised tensor and
rewrites the network's convolutions and matrix products to int8 (weights per channel, activations per
tensor). The result is an IR too, its card saying ``precision: "int8"`` and how it was calibrated; it
runs in :class:`~masklab.runtime.exported.OpenVINORuntime` with ``INFERENCE_PRECISION_HINT=f32``, so the
parts left unquantised (below) stay exact fp32.

What is not quantised (:data:`IGNORED_PATTERNS`), and why: the tensor core holds coordinate arithmetic
as well as the network. Box decoding (anchors + deltas in ``rpn`` and ``roi_heads``), the input resize in
``transform`` and the RoI poolers' level mapping (``sqrt`` of each box's area) work on pixel
coordinates; an 8-bit grid over a 0-1066 px range is 4 px wide, and quantising them loses most
detections (measured on the shapes demo model: 2 of 3 images lost every detection). The mask RoI
pooler's ``aten::scatter`` is the trap others published for this torchvision model: on a calibration
image without detections it sees an empty tensor and gets no statistics. Results are not exact: the
README and ``benchmarks/int8.py`` state the cost (mask AP, agreement with fp32).

Calibration images must show objects the model finds: the fp32 model is run on (a sample of) them first
and a set on which it finds nothing is refused (:class:`CalibrationError`). 100-300 images like the ones
to be segmented are enough (NNCF's default subset is 300).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from masklab._version import __version__
from masklab.errors import UsageError
from masklab.export import export_loaded, save_ir
from masklab.io.atomic import atomic_write_json
from masklab.models.card import ModelCard
from masklab.optional import require

__all__ = [
    "IGNORED_PATTERNS",
    "HEAD_PATTERNS",
    "DEFAULT_SUBSET",
    "CalibrationError",
    "CalibrationCheck",
    "quantized_path",
    "check_calibration",
    "quantize_ir",
    "ensure_quantized",
]

#: node-name patterns (OpenVINO friendly names, from the TorchScript scopes) left in fp32; see the module docstring
IGNORED_PATTERNS = (
    r"__module\.(transform|rpn|roi_heads)/.*",  # resize, anchors, box decoding: pixel coordinates
    r".*_roi_pool.*",  # level mapping (sqrt of box areas); the mask pooler's aten::scatter (no statistics without detections)
    r"prim::.*",  # TorchScript list plumbing
)
#: the last layers of the box and mask heads, kept fp32 with ``fp32_heads=True`` (a little slower, closer to fp32)
HEAD_PATTERNS = (r"__module\.roi_heads\.(box_predictor|mask_predictor).*",)
#: NNCF's default calibration subset
DEFAULT_SUBSET = 300
#: fewer calibration images than this get a warning (the brief's 100-300 images)
MIN_ADVISED = 100
#: how many calibration images the fp32 check runs on once one of them has detections
CHECK_AT_LEAST = 32


class CalibrationError(UsageError):
    """The calibration images cannot calibrate this model (none given, or no detections on any)."""


@dataclass(frozen=True)
class CalibrationCheck:
    """What the fp32 model found on the calibration images it was run on.

    ``checked``: images run; ``with_detections``: how many of them had at least one detection (at the
    model's baked score threshold); ``detections``: their total; ``total``: images in the set."""

    checked: int
    with_detections: int
    detections: int
    total: int


def quantized_path(fp32_ir: str | os.PathLike) -> Path:
    """Where the int8 model made from the fp32 IR ``fp32_ir`` is kept: ``core.xml`` -> ``core-int8.xml`` in the
    same folder (so it shares the fp32 conversion's cache key: weights, baked options, versions)."""
    p = Path(fp32_ir)
    return p.with_name(f"{p.stem}-int8{p.suffix}")


def _core_input(image: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> float32 (3, H, W) in [0, 1], the exported core's input."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise UsageError(f"calibration images must be RGB uint8 (H, W, 3) arrays, found {image.dtype} {image.shape}")
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / np.float32(255)


def _check_order(n: int) -> list[int]:
    """Image indices in the order the check visits them: spread over the set first (evenly spaced), then the rest."""
    first = sorted(set(np.linspace(0, n - 1, min(n, CHECK_AT_LEAST)).round().astype(int).tolist()))
    chosen = set(first)
    return first + [i for i in range(n) if i not in chosen]


def check_calibration(model, images: Sequence[np.ndarray], *, threads: int | None = None) -> CalibrationCheck:
    """Run the fp32 ``model`` (an ``openvino.Model`` of the tensor core) on the calibration ``images``
    (RGB uint8 (H, W, 3)): at least :data:`CHECK_AT_LEAST` spread over the set, and on until one image has
    a detection. Raises :class:`CalibrationError` when it finds none on any of them."""
    ov = require("openvino")
    n = len(images)
    if n == 0:
        raise CalibrationError("no calibration images: give a folder or dataset of 100-300 images like those you will segment")
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    compiled = ov.Core().compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    scores_out = compiled.outputs[1]
    checked = with_det = dets = 0
    for i in _check_order(n):
        if checked >= CHECK_AT_LEAST and with_det:
            break
        k = len(np.asarray(request.infer([_core_input(images[i])])[scores_out]))
        checked, with_det, dets = checked + 1, with_det + (k > 0), dets + k
    if with_det == 0:
        raise CalibrationError(
            f"the fp32 model finds no objects in any of the {n} calibration images (at its score threshold), so "
            "they cannot calibrate it: int8 calibration needs images on which the model finds objects. Use "
            "100-300 images like those you will segment (e.g. part of your training or validation set), or "
            "check that this is the right model for them"
        )
    return CalibrationCheck(checked=checked, with_detections=with_det, detections=dets, total=n)


@contextlib.contextmanager
def _quiet_nncf():
    """NNCF logs one INFO line per node it leaves out (hundreds here) and numpy overflow warnings from
    its statistics on the empty tensors of images without detections; keep warnings and errors only.
    Its progress bars go to stderr: stdout is the caller's (``masklab bench --json`` prints JSON there)."""
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.filterwarnings("ignore", category=RuntimeWarning, module="numpy")
            yield
    finally:
        logger.setLevel(level)


def _read_ir_card(model, where: str) -> ModelCard:
    if not model.has_rt_info(["masklab", "card"]):
        raise UsageError(f"{where} has no masklab model card: quantize an IR written by `masklab export --format openvino`")
    card = ModelCard.from_json(json.loads(model.get_rt_info(["masklab", "card"]).astype(str)), where=where)
    if card.precision == "int8":
        raise UsageError(f"{where} is already an int8 model; quantize its fp32 IR instead")
    return card


def quantize_ir(
    fp32_ir: str | os.PathLike,
    images: Sequence[np.ndarray],
    *,
    out: str | os.PathLike,
    subset_size: int = DEFAULT_SUBSET,
    fp32_heads: bool = False,
    calib_name: str | None = None,
    threads: int | None = None,
) -> Path:
    """Quantise the fp32 OpenVINO IR ``fp32_ir`` (``.xml``, its card inside) to int8, written to ``out`` (``.xml`` + ``.bin``).

    Args:
        images: calibration images, RGB uint8 (H, W, 3), any sizes; a Sequence (NNCF reads it several
            times, so a lazy sequence that loads on ``__getitem__`` keeps memory low).
        subset_size: how many of them NNCF uses (it samples when there are more; default 300).
        fp32_heads: also keep the box and mask predictors in fp32 (:data:`HEAD_PATTERNS`).
        calib_name: what the images are (a folder, a dataset), recorded in the card.
        threads: CPU threads for the fp32 check.

    Raises :class:`CalibrationError` when the fp32 model finds no objects in the images.
    """
    ov, nncf = require("openvino"), require("nncf")
    out = Path(out)
    if out.suffix != ".xml":
        raise UsageError(f"an int8 OpenVINO model is written to a .xml file (+ .bin), found {out.name!r}")
    model = ov.Core().read_model(str(fp32_ir))
    card = _read_ir_card(model, str(fp32_ir))
    check = check_calibration(model, images, threads=threads)
    if check.with_detections * 2 < check.checked:
        print(f"masklab: the fp32 model finds objects in only {check.with_detections} of {check.checked} calibration "
              "images checked; images like those you will segment calibrate the detection heads better", file=sys.stderr)
    if len(images) < MIN_ADVISED:
        print(f"masklab: calibrating on {len(images)} images; {MIN_ADVISED}-{DEFAULT_SUBSET} give more reliable int8 ranges",
              file=sys.stderr)
    patterns = IGNORED_PATTERNS + (HEAD_PATTERNS if fp32_heads else ())
    subset = min(int(subset_size), len(images))
    with _quiet_nncf():
        q = nncf.quantize(model, nncf.Dataset(images, lambda im: [_core_input(im)]), subset_size=subset,
                          ignored_scope=nncf.IgnoredScope(patterns=list(patterns), validate=False))
    record = {
        "tool": f"nncf {nncf.__version__}",
        "method": "post-training, default preset (symmetric int8 weights per channel, activations per tensor)",
        "calibration": calib_name, "subset_size": subset, **asdict(check),
        "fp32_layers": list(patterns), "source_ir": Path(fp32_ir).name,
    }
    qcard = card.replace(precision="int8", quantization=record, masklab_version=__version__).to_json()
    out.parent.mkdir(parents=True, exist_ok=True)
    save_ir(q, out, qcard)
    atomic_write_json(out.with_name(out.name + ".card.json"), qcard, indent=2)
    return out


def ensure_quantized(loaded, images: Sequence[np.ndarray] | None, *, fp32_ir: str | os.PathLike,
                     out: str | os.PathLike | None = None, force: bool = False, **options) -> Path:
    """The int8 model of ``loaded`` (a :class:`~masklab.models.loading.LoadedModel` with its torch module):
    the fp32 IR ``fp32_ir`` is exported first when missing (the conversion cache), then quantised to ``out``
    (default :func:`quantized_path` of ``fp32_ir``) when that is missing or ``force``. ``images``: as
    :func:`quantize_ir` (may be None when ``out`` exists); ``options``: :func:`quantize_ir`'s."""
    out = Path(out) if out is not None else quantized_path(fp32_ir)
    if not force and out.is_file() and out.with_suffix(".bin").is_file():
        return out
    if images is None:
        raise CalibrationError(f"no int8 model at {out} and no calibration images to make one")
    fp32_ir = Path(fp32_ir)
    if not fp32_ir.is_file():
        print(f"masklab: converting {loaded.spec.name} to openvino once (cached in {fp32_ir.parent})", file=sys.stderr)
        export_loaded(loaded, fmt="openvino", out=fp32_ir)
    return quantize_ir(fp32_ir, images, out=out, **options)
