"""Export a Mask R-CNN to ONNX, OpenVINO IR or TorchScript, carrying its model card.

    >>> from masklab.export import export_model                    # doctest: +SKIP
    >>> export_model("maskrcnn_resnet50_fpn_v2", fmt="openvino", out="v2.xml")
    >>> Segmenter("v2.xml")                                        # same outputs as the original

What is exported is the *tensor core* (:mod:`masklab.export.core`): image float32 (3, H, W) in [0, 1] of
any size -> boxes, scores, labels, 28x28 mask probabilities (N may be 0). Masks are pasted outside with
:func:`masklab.structures.masks.paste_masks`, the same code every backend uses. Inference options
(score threshold, NMS, detections per image, input resize, proposals) are baked in at export time and
recorded in the card.

Where the card lives: ONNX ``metadata_props["masklab.card"]``; OpenVINO ``rt_info["masklab"]["card"]``;
TorchScript the archive's extra file ``masklab_card.json``. A ``FILE.card.json`` sidecar is written next
to every export too, for people and other languages.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from masklab.errors import MissingDependencyError, UsageError
from masklab.io.atomic import atomic_write, atomic_write_bytes, atomic_write_json

__all__ = [
    "FORMATS",
    "CARD_KEY",
    "model_card",
    "trace_core",
    "export_loaded",
    "export_model",
    "detect_export_format",
    "read_card",
    "require",
    "options_from_card",
]

#: format name -> file suffix.
FORMATS = {"onnx": ".onnx", "openvino": ".xml", "torchscript": ".pt"}
CARD_KEY = "masklab.card"
_TS_CARD_FILE = "masklab_card.json"
CARD_VERSION = 1
_EXTRA = {"onnx": "masklab[onnx]", "openvino": "masklab[openvino]", "onnxruntime": "masklab[onnx]"}


def require(module: str):
    """Import an optional dependency, or raise :class:`MissingDependencyError` naming the pip line."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        extra = _EXTRA.get(module.split(".")[0], module)
        raise MissingDependencyError(
            f"{module} is not installed; install it with: pip install '{extra}'"
        ) from None


def model_card(loaded, *, mask_threshold: float = 0.5) -> dict[str, Any]:
    """The card an exported file carries: the zoo entry's card + the baked options + preprocessing."""
    from masklab import __version__

    m = loaded.module
    card = loaded.spec.card()
    t = m.transform
    rh = m.roi_heads
    card.update(
        {
            "masklab_card_version": CARD_VERSION,
            "masklab_version": __version__,
            "source_weights": loaded.weights_source,
            "options": {
                "score_thresh": float(rh.score_thresh),
                "nms_thresh": float(rh.nms_thresh),
                "max_detections": int(rh.detections_per_img),
                "min_size": int(t.min_size[0]),
                "max_size": int(t.max_size),
                "rpn_post_nms_top_n": int(m.rpn._post_nms_top_n["testing"]),
            },
            "preprocessing": {
                "input": "image float32 (3, H, W), RGB, uint8 / 255 in [0, 1], any H and W",
                "inside_the_model": "normalise with image_mean/image_std, resize shorter side to min_size "
                "(longer side at most max_size), pad to a multiple of 32",
                "image_mean": [float(v) for v in t.image_mean],
                "image_std": [float(v) for v in t.image_std],
            },
            "outputs": {
                "boxes": "float32 (N, 4) xyxy in pixels of the input image",
                "scores": "float32 (N,) in [0, 1], descending",
                "labels": "int64 (N,) class ids, index into categories",
                "mask_probs": "float32 (N, 1, 28, 28) mask probabilities inside each box; paste with "
                "masklab.structures.masks.paste_masks (padding 1, threshold mask_threshold)",
            },
            "mask_threshold": float(mask_threshold),
        }
    )
    return card


def _example_image(h: int, w: int):
    """A deterministic float (3, h, w) image with shapes in it (content only steers the trace's example run)."""
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    img = (rng.random((h, w, 3)) * 60 + 90).astype(np.uint8)
    for _ in range(4):
        y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
        img[y : y + h // 3, x : x + w // 3] = rng.integers(0, 255, 3)
    return torch.from_numpy(img).permute(2, 0, 1).float().div(255)


def trace_core(module, *, example_hw: tuple[int, int] = (240, 320)):
    """TorchScript-trace the tensor core of ``module`` (a torchvision MaskRCNN) on a generated image.

    torchvision's transform and heads are written to trace with dynamic shapes, so the trace runs at any
    image size (tests check a second size and an image without detections)."""
    import warnings

    import torch

    from masklab.export.core import TensorCore

    core = TensorCore(module.float().eval())
    example = _example_image(*example_hw)
    with warnings.catch_warnings(), torch.no_grad():
        # torchvision's tracing paths warn about every shape-to-tensor conversion; they are intended.
        warnings.simplefilter("ignore")
        return torch.jit.trace(core, (example,), check_trace=False), example


def _export_onnx(traced, example, out: Path, card: dict, *, opset: int = 17) -> None:
    import io
    import warnings

    import torch

    onnx = require("onnx")
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            traced,
            (example,),
            buf,
            dynamo=False,  # the TorchScript exporter handles torchvision's detection ops (NMS, RoIAlign)
            opset_version=opset,
            input_names=["image"],
            output_names=["boxes", "scores", "labels", "mask_probs"],
            dynamic_axes={
                "image": {1: "height", 2: "width"},
                "boxes": {0: "n"},
                "scores": {0: "n"},
                "labels": {0: "n"},
                "mask_probs": {0: "n"},
            },
        )
    proto = onnx.load_from_string(buf.getvalue())
    entry = proto.metadata_props.add()
    entry.key = CARD_KEY
    entry.value = json.dumps(card)
    atomic_write_bytes(out, proto.SerializeToString())


def _export_openvino(traced, out: Path, card: dict) -> None:
    ov = require("openvino")
    model = ov.convert_model(traced, input=[ov.PartialShape([3, -1, -1])])
    for i, name in enumerate(("boxes", "scores", "labels", "mask_probs")):
        model.outputs[i].get_tensor().set_names({name})
    model.set_rt_info(json.dumps(card), ["masklab", "card"])
    # .xml + .bin: written in a temp folder next to the target, then moved (bin first, so a reader that
    # finds the new .xml always finds its weights).
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.stem}."))
    try:
        ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)
        os.replace(tmp / "model.bin", out.with_suffix(".bin"))
        os.replace(tmp / "model.xml", out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _export_torchscript(traced, out: Path, card: dict) -> None:
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream, still the portable format
        atomic_write(out, lambda f: torch.jit.save(traced, f, _extra_files={_TS_CARD_FILE: json.dumps(card)}))


def export_loaded(
    loaded, *, fmt: str, out: str | os.PathLike, example_hw: tuple[int, int] = (240, 320), traced=None
) -> Path:
    """Export an already-built :class:`~masklab.models.loading.LoadedModel` to ``out`` in format ``fmt``.

    Returns the written path. ``out``'s suffix must fit the format (.onnx / .xml / .pt). ``traced``: the
    ``(script_module, example)`` pair :func:`trace_core` returned, to export several formats from one trace."""
    if fmt not in FORMATS:
        raise UsageError(f"export format must be one of {', '.join(FORMATS)}, found {fmt!r}")
    out = Path(out)
    if out.suffix != FORMATS[fmt]:
        raise UsageError(f"a {fmt} export must be written to a {FORMATS[fmt]} file, found {out.name!r}")
    if loaded.module is None:
        raise UsageError(f"{loaded.weights_source} is already an exported file; export from a model name or weights")
    if fmt == "onnx":
        require("onnx")
    if fmt == "openvino":
        require("openvino")
    out.parent.mkdir(parents=True, exist_ok=True)
    card = model_card(loaded)
    traced, example = traced if traced is not None else trace_core(loaded.module, example_hw=example_hw)
    if fmt == "onnx":
        _export_onnx(traced, example, out, card)
    elif fmt == "openvino":
        _export_openvino(traced, out, card)
    else:
        _export_torchscript(traced, out, card)
    atomic_write_json(out.with_name(out.name + ".card.json"), card, indent=2)
    return out


def export_model(
    model: str | os.PathLike,
    *,
    fmt: str,
    out: str | os.PathLike,
    weights: str | os.PathLike | None = None,
    options=None,
) -> Path:
    """Build ``model`` (a name or weights file; ``weights`` as for :class:`~masklab.Segmenter`) with
    ``options`` (:class:`~masklab.models.loading.ModelOptions`, baked in) and export it."""
    from masklab.models.loading import ModelOptions, resolve

    loaded = resolve(model, weights=weights, opts=options or ModelOptions())
    return export_loaded(loaded, fmt=fmt, out=out)


def _is_torchscript_archive(path: Path) -> bool:
    """TorchScript archives hold a ``code/`` folder; ``torch.save`` state dicts do not."""
    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in n or n.startswith("code/") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def detect_export_format(path: str | os.PathLike) -> str | None:
    """``"onnx"``, ``"openvino"`` or ``"torchscript"`` for an exported file, None otherwise (by content for
    ``.pt``, which may also be a plain state dict)."""
    p = Path(path)
    if not p.is_file():
        return None
    if p.suffix == ".onnx":
        return "onnx"
    if p.suffix == ".xml":
        return "openvino"
    if p.suffix in (".pt", ".pth") and _is_torchscript_archive(p):
        return "torchscript"
    return None


def read_card(path: str | os.PathLike) -> dict[str, Any]:
    """The model card stored inside an exported file (see the module docstring for where)."""
    p = Path(path)
    fmt = detect_export_format(p)
    if fmt == "onnx":
        onnx = require("onnx")
        proto = onnx.load(str(p), load_external_data=False)
        props = {e.key: e.value for e in proto.metadata_props}
        text = props.get(CARD_KEY)
    elif fmt == "openvino":
        ov = require("openvino")
        model = ov.Core().read_model(str(p))
        text = model.get_rt_info(["masklab", "card"]).astype(str) if model.has_rt_info(["masklab", "card"]) else None
    elif fmt == "torchscript":
        with zipfile.ZipFile(p) as z:
            names = [n for n in z.namelist() if n.endswith("extra/" + _TS_CARD_FILE)]
            text = z.read(names[0]).decode() if names else None
    else:
        raise UsageError(f"{p} is not an exported masklab model (.onnx, .xml or TorchScript .pt)")
    if text is None:
        raise UsageError(f"{p} is a {fmt} file without a masklab model card; export it with `masklab export`")
    card = json.loads(text)
    if card.get("masklab_card_version") != CARD_VERSION:
        raise UsageError(f"{p}: model card version {card.get('masklab_card_version')!r}, this masklab reads {CARD_VERSION}")
    card["format"] = fmt
    return card


def options_from_card(card: dict):
    """The :class:`~masklab.models.loading.ModelOptions` an export baked in."""
    from masklab.models.loading import ModelOptions

    return ModelOptions(**card["options"])

