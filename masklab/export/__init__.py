from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from masklab._version import __version__
from masklab.errors import UsageError
from masklab.export.core import output_names
from masklab.io.atomic import atomic_write, atomic_write_bytes, atomic_write_json
from masklab.models.card import ModelCard
from masklab.models.exported import CARD_KEY, FORMATS, TS_CARD_FILE, detect_export_format, read_card
from masklab.models.loading import LoadedModel, load_model
from masklab.models.mask_iou import has_mask_iou_head
from masklab.optional import require
from masklab.settings import InferenceSettings

__all__ = [
    "FORMATS",
    "CARD_KEY",
    "model_card",
    "trace_core",
    "export_loaded",
    "export_model",
    "save_ir",
    "detect_export_format",
    "read_card",
    "require",
]

#: what the exported core returns, for the card's readers (people and other languages)
_OUTPUTS = {
    "boxes": "float32 (N, 4) xyxy in pixels of the input image",
    "scores": "float32 (N,) in [0, 1], descending",
    "labels": "int64 (N,) class ids, index into categories",
    "mask_probs": "float32 (N, 1, 28, 28) mask probabilities inside each box; paste with "
    "masklab.structures.masks.paste_masks (padding 1, threshold mask_threshold)",
}
_MASK_IOU_OUTPUT = {"mask_iou": "float32 (N,) in [0, 1], the MaskIoU head's predicted IoU of each mask (its quality)"}


def model_card(loaded: LoadedModel, *, mask_threshold: float = 0.5) -> ModelCard:
    """The card an exported file carries: the model's card with the options read back from the built
    module (what is baked in), its normalisation, and the outputs' description."""
    m = loaded.module
    t, rh = m.transform, m.roi_heads
    return loaded.card.replace(
        score_thresh=float(rh.score_thresh),
        nms_thresh=float(rh.nms_thresh),
        max_detections=int(rh.detections_per_img),
        proposals=int(m.rpn._post_nms_top_n["testing"]),
        min_size=int(t.min_size[0]),
        max_size=int(t.max_size),
        image_mean=tuple(float(v) for v in t.image_mean),
        image_std=tuple(float(v) for v in t.image_std),
        mask_threshold=float(mask_threshold),
        weights=None,
        source_weights=loaded.weights_source,
        outputs={**_OUTPUTS, **(_MASK_IOU_OUTPUT if has_mask_iou_head(m) else {})},
        masklab_version=__version__,
    )


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
    from masklab.export.tracing import traceable_heads

    core = TensorCore(module.float().eval())
    example = _example_image(*example_hw)
    with warnings.catch_warnings(), torch.no_grad(), traceable_heads():
        # torchvision's tracing paths warn about every shape-to-tensor conversion; they are intended.
        warnings.simplefilter("ignore")
        return torch.jit.trace(core, (example,), check_trace=False), example


def _export_onnx(traced, example, out: Path, card: dict, names: tuple[str, ...], *, opset: int = 17) -> None:
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
            output_names=list(names),
            dynamic_axes={"image": {1: "height", 2: "width"}, **{name: {0: "n"} for name in names}},
        )
    proto = onnx.load_from_string(buf.getvalue())
    entry = proto.metadata_props.add()
    entry.key = CARD_KEY
    entry.value = json.dumps(card)
    atomic_write_bytes(out, proto.SerializeToString())


def _export_openvino(traced, out: Path, card: dict, names: tuple[str, ...]) -> None:
    from masklab.export.tracing import stop_nms_early

    ov = require("openvino")
    model = ov.convert_model(traced, input=[ov.PartialShape([3, -1, -1])])
    stop_nms_early(model, {"roi_heads": card["max_detections"], "rpn": card["proposals"]})
    for i, name in enumerate(names):
        model.outputs[i].get_tensor().set_names({name})
    save_ir(model, out, card)


def save_ir(model, out: Path, card: dict) -> None:
    """Write the ``openvino.Model`` ``model`` with ``card`` in its rt_info to ``out`` (.xml + .bin), fp32
    weights kept (``compress_to_fp16=False``)."""
    ov = require("openvino")
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
        atomic_write(out, lambda f: torch.jit.save(traced, f, _extra_files={TS_CARD_FILE: json.dumps(card)}))


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
    card = model_card(loaded).replace(export_format=fmt).to_json()
    traced, example = traced if traced is not None else trace_core(loaded.module, example_hw=example_hw)
    names = output_names(loaded.module)  # + mask_iou with a MaskIoU head
    if fmt == "onnx":
        _export_onnx(traced, example, out, card, names)
    elif fmt == "openvino":
        _export_openvino(traced, out, card, names)
    else:
        _export_torchscript(traced, out, card)
    atomic_write_json(out.with_name(out.name + ".card.json"), card, indent=2)
    return out


def export_model(
    model: str | os.PathLike | None = None,
    *,
    fmt: str,
    out: str | os.PathLike,
    weights: str | os.PathLike | None = None,
    settings: InferenceSettings | None = None,
) -> Path:
    """Build a model and export it, its ``settings``' options baked in. ``model``/``weights`` as for
    :class:`~masklab.Segmenter` (they override ``settings.model``/``settings.weights``)."""
    s = settings or InferenceSettings()
    if model is not None:
        s = s.replace(model=os.fspath(model))
    if weights is not None:
        s = s.replace(weights=os.fspath(weights))
    return export_loaded(load_model(s), fmt=fmt, out=out)
