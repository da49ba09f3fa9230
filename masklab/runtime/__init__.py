"""The runtime layer: what runs the network. :func:`make_runtime` is the one place that picks it.

Every runtime has ``name`` (the ``backend`` value that selects it), ``precision`` and ``predict(images)``
(RGB uint8 (H, W, 3) arrays in; :class:`~masklab.structures.detections.Detections` in original-image
pixels out). The user's word for the choice is ``backend`` (``--backend``, ``Segmenter(backend=...)``).

=============== ================================================ =========================== ==========
backend         what runs                                        precisions                  exact fp32
=============== ================================================ =========================== ==========
``torch``       eager torchvision module (the reference)         fp32; bf16/fp16 -> autocast  yes
``torch-fast``  channels-last (+ autocast), CUDA batching        fp32, bf16, fp16 (CUDA)      yes
``openvino``    OpenVINO on the tensor core (.xml, or converted  fp32, bf16, fp16; int8:      yes
                once from the torch model and cached)            ``masklab quantize``'s model
``onnx``        ONNX Runtime on the tensor core (.onnx, or       fp32                         yes
                exported once and cached)
``torchscript`` a TorchScript export (.pt)                       fp32                         yes
``auto``        an exported file: its runtime; CUDA: torch-fast; the CPU: torch (eager)
=============== ========================================================================================

Why ``auto`` stays eager on the CPU: it is the only path whose results are bit-for-bit torchvision's
(the project's golden tests hold it to scores within 1e-5 and identical masks); channels-last and
OpenVINO give the same instances but sum in another order (scores move by ~1e-5). ``auto`` also never
converts a model to another runtime by itself (30-120 s once). The fastest exact path on this
project's CPU is OpenVINO fp32 (``backend="openvino"``, or ``masklab export --format openvino`` once and
run the ``.xml``); ``torch-fast`` needs no conversion (see ``benchmarks/RESULTS.md``). Reduced precision
is only ever used when asked for.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from masklab._version import __version__
from masklab.errors import UsageError
from masklab.export import export_loaded, model_card
from masklab.models.exported import FORMATS
from masklab.models.loading import LoadedModel
from masklab.models.matterport.runtime import MatterportRuntime
from masklab.models.weights import cache_dir
from masklab.runtime.torch import TorchRuntime
from masklab.settings import InferenceSettings
from masklab.structures.detections import Detections

__all__ = ["Runtime", "make_runtime", "converted_path"]


class Runtime(Protocol):
    """Anything with ``name``, ``precision`` and ``predict(images) -> list[Detections]``."""

    name: str
    precision: str

    def predict(self, images: Sequence[np.ndarray]) -> list[Detections]: ...


def _state_digest(module) -> str:
    """sha256 over every tensor of the module's state dict (names, shapes, dtypes, bytes)."""
    import torch

    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        t = v.detach().cpu().contiguous()
        h.update(f"{k}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def converted_path(loaded: LoadedModel, fmt: str) -> Path:
    """Where the one-time conversion of ``loaded`` to ``fmt`` is cached: ``$MASKLAB_HOME/exports/<key>/``.

    The key covers the weights (bytes), the baked options, the format and the library versions, so a
    change in any of them converts again."""
    import torch

    card = model_card(loaded).to_json()
    versions = [__version__, torch.__version__]
    if fmt == "openvino":
        import openvino

        versions.append(openvino.__version__)
    baked = {k: card[k] for k in ("score_thresh", "nms_thresh", "max_detections", "min_size", "max_size", "proposals")}
    key_src = json.dumps([_state_digest(loaded.module), baked, card["categories"], fmt, versions])
    key = hashlib.sha256(key_src.encode()).hexdigest()[:20]
    return cache_dir() / "exports" / f"{loaded.spec.name}-{key}" / f"core{FORMATS[fmt]}"


def _ensure_converted(loaded: LoadedModel, fmt: str) -> Path:
    path = converted_path(loaded, fmt)
    if not path.is_file():
        print(f"masklab: converting {loaded.spec.name} to {fmt} once (cached in {path.parent})", file=sys.stderr)
        export_loaded(loaded, fmt=fmt, out=path)
    return path


def make_runtime(loaded: LoadedModel, settings: InferenceSettings, *, device: str) -> Runtime:
    """The runtime for ``loaded`` under ``settings`` (its ``backend``, ``precision``, ``threads`` and, for
    exported cores, ``score_thresh``) on ``device`` (already resolved: ``"cpu"`` or ``"cuda[:N]"``)."""
    backend, precision = settings.backend, settings.precision
    if loaded.spec.arch == "matterport_resnet101":  # its own graph, eager fp32 only
        if backend not in ("auto", "torch") or precision != "fp32":
            raise UsageError(f"{loaded.spec.name} runs only with backend 'torch' at precision 'fp32'")
        return MatterportRuntime(loaded.module, device=device)
    fmt = loaded.export_format
    if fmt is not None:  # an exported file: only its own runtime can run it
        if backend not in ("auto", fmt):
            raise UsageError(f"{loaded.weights_source} is a {fmt} export: use backend 'auto' or '{fmt}', not {backend!r}")
        return _file_runtime(fmt, loaded.weights_source, _file_precision(loaded, settings), device=device)
    if precision == "int8":  # the model `masklab quantize` calibrated, next to the fp32 conversion
        return _int8_runtime(loaded, settings, device=device)
    if backend == "auto":  # see the module docstring: eager on the CPU, fast on CUDA, never a conversion
        backend = "torch-fast" if device.startswith("cuda") or precision != "fp32" else "torch"
    if backend == "torch" and precision == "fp32":
        return TorchRuntime(loaded.module, device=device)
    if backend in ("torch", "torch-fast"):  # reduced precision in torch = autocast, in the fast runtime
        from masklab.runtime.torch_fast import TorchFastRuntime

        return TorchFastRuntime(loaded.module, device=device, precision=precision)
    if device.startswith("cuda") and backend == "openvino":
        raise UsageError("the openvino backend runs on the CPU here; use --device cpu or backend torch-fast")
    return _file_runtime(backend, str(_ensure_converted(loaded, backend)), settings, device=device)


def _file_precision(loaded: LoadedModel, settings: InferenceSettings) -> InferenceSettings:
    """An int8 file runs at int8 (asked for or left at the default fp32); an fp32 file never claims int8."""
    path = loaded.weights_source
    if loaded.card.precision == "int8":
        if settings.precision not in ("fp32", "int8"):
            raise UsageError(f"{path} is an int8 model: it runs at precision int8, not {settings.precision!r}")
        return settings.replace(precision="int8")
    if settings.precision == "int8":
        raise UsageError(f"{path} is not quantised; make an int8 model from it with "
                         f"`masklab quantize --model {path} --calib IMAGES --out FILE.xml`")
    return settings


def _int8_runtime(loaded: LoadedModel, settings: InferenceSettings, *, device: str) -> Runtime:
    from masklab.export.quantize import quantized_path

    if settings.backend not in ("auto", "openvino") or device.startswith("cuda"):
        raise UsageError(f"precision int8 runs on the CPU with backend openvino or auto, found backend "
                         f"{settings.backend!r} on {device}")
    path = quantized_path(converted_path(loaded, "openvino"))
    if not path.is_file():
        weights = f" --weights {settings.weights}" if settings.weights else ""
        raise UsageError(
            f"no int8 model is prepared for {loaded.spec.name} ({loaded.weights_source}) with these options; "
            f"calibrate one once on 100-300 images like those you will segment:\n"
            f"masklab quantize --model {settings.model}{weights} --calib IMAGES_OR_DATASET\n"
            f"(it is cached in {path.parent}), or pass an int8 .xml that `masklab quantize --out` wrote as the model"
        )
    return _file_runtime("openvino", str(path), settings, device=device)


def _file_runtime(fmt: str, path: str, settings: InferenceSettings, *, device: str) -> Runtime:
    import torch

    from masklab.runtime import exported

    kw = {"precision": settings.precision, "score_thresh": settings.score_thresh}
    # threads not given: as many as the process's torch uses (which entry points set to every CPU)
    threads = settings.threads or torch.get_num_threads()
    if fmt == "openvino":
        if device.startswith("cuda"):
            raise UsageError("an OpenVINO export runs on the CPU here; use --device cpu")
        return exported.OpenVINORuntime(path, threads=threads, **kw)
    if fmt == "onnx":
        return exported.OnnxRuntime(path, threads=threads, device=device, **kw)
    return exported.TorchScriptRuntime(path, device=device, **kw)
