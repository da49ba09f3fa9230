"""The runtime layer: what runs the network. :func:`make_runtime` is the one place that picks it.

Every runtime has ``name`` (the ``backend`` value that selects it), ``precision`` and ``predict(images)``
(RGB uint8 (H, W, 3) arrays in; :class:`~masklab.structures.detections.Detections` in original-image
pixels out). The user's word for the choice is ``backend`` (``--backend``, ``Segmenter(backend=...)``).

=============== ================================================ =========================== ==========
backend         what runs                                        precisions                  exact fp32
=============== ================================================ =========================== ==========
``torch``       eager torchvision module (the bit-for-bit        fp32; bf16/fp16 -> autocast  yes
                reference)
``torch-fast``  channels-last (+ autocast), CUDA batching        fp32, bf16, fp16 (CUDA)      yes
``openvino``    OpenVINO on the tensor core (.xml, or the        fp32, bf16, fp16, int8       yes
                prepared model, converted once and cached)
``onnx``        ONNX Runtime on the tensor core (.onnx, or       fp32                         yes
                exported once and cached)
``torchscript`` a TorchScript export (.pt)                       fp32                         yes
``auto``        the fastest exact path available (below)
=============== ========================================================================================

``auto``, decided here and nowhere else:

- an exported file: its own runtime;
- CUDA: ``torch-fast``;
- the CPU, a **prepared** model in the cache (:mod:`masklab.runtime.prepared`; ``masklab models
  --prepare``, :meth:`Segmenter.prepare`, or a long run that prepared it): OpenVINO. It gives the same
  instances as eager torch (the "exact" rule: >= 99% matched at mask IoU >= 0.9 with the same class,
  boxes within 0.01 px, scores within 1e-4; ``tests/test_fast_default.py``) 1.5-1.7x faster; found and
  run without importing torch;
- the CPU, none prepared: eager torch, with one line saying how to prepare the fast path. Nobody waits
  30-120 s for a conversion by surprise: a run long enough to repay it (:func:`worth_preparing`, from the
  number of inputs) prepares it first and says so.

Precision: ``fp32`` is exact. A reduced precision runs only when asked for, and only where the CPU has
it natively (:mod:`masklab.hardware`): emulated bf16 is 2-3x *slower* than fp32, so ``bf16``/``fp16`` on a
CPU without it warns once and runs fp32 instead (``strict_precision=True`` refuses instead).
``int8`` runs a quantized OpenVINO model (``masklab quantize``); it is not exact: its cost is stated
in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from masklab._version import __version__
from masklab.errors import UsageError
from masklab.hardware import cpu_features, thread_budget
from masklab.models.exported import FORMATS
from masklab.models.loading import LoadedModel
from masklab.models.weights import cache_dir
from masklab.optional import require
from masklab.runtime.prepared import note, openvino_installed, prepared_model, timed_note
from masklab.settings import InferenceSettings
from masklab.structures.detections import Detections

__all__ = ["Runtime", "make_runtime", "converted_path", "prepare", "resolve_precision", "worth_preparing",
           "PrecisionWarning"]

#: a conversion to OpenVINO costs a fixed part plus about this many eager images (measured idle on the 2-core
#: EPYC: maskrcnn_resnet50_fpn_v2 10.5-16.8 s = 2-3.3 eager images; the shapes demo model ~15 s under load,
#: mostly fixed cost); see worth_preparing
CONVERT_FIXED_S = 8.0
CONVERT_IMAGES = 3.0
#: what fraction of an eager image's time the prepared model saves (1 - 1/1.6, the measured ratio's floor)
PREPARED_SAVING = 0.35


class PrecisionWarning(UserWarning):
    """A precision was asked for that this CPU only emulates; masklab ran the exact one instead."""


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
    """Where the one-time conversion of ``loaded`` to ``fmt`` is cached.

    OpenVINO, for a model the settings identify (zoo weights, a file, a trained run): the prepared model
    (:mod:`masklab.runtime.prepared`, keyed on the weights file's bytes; found without torch). Otherwise
    (ONNX, or a network built in memory): ``$MASKLAB_HOME/exports/<key>/``, keyed on the module's tensors,
    the baked options, the format and the library versions. A change in any of them converts again."""
    if fmt == "openvino" and loaded.settings is not None:  # the same question the Segmenter asks first
        seed = re.fullmatch(r"random\(seed=(\d+)\)", loaded.weights_source)
        prepared = prepared_model(loaded.settings, source=loaded.source, seed=int(seed[1]) if seed else 0)
        if prepared is not None:
            return prepared.path
    import torch

    from masklab.export import model_card

    card = model_card(loaded).to_json()
    versions = [__version__, torch.__version__]
    if fmt == "openvino":
        versions.append(require("openvino").__version__)
    baked = {k: card[k] for k in ("score_thresh", "nms_thresh", "max_detections", "min_size", "max_size", "proposals")}
    key_src = json.dumps([_state_digest(loaded.module), baked, card["categories"], fmt, versions])
    key = hashlib.sha256(key_src.encode()).hexdigest()[:20]
    return cache_dir() / "exports" / f"{loaded.spec.name}-{key}" / f"core{FORMATS[fmt]}"


def prepare(loaded: LoadedModel, fmt: str = "openvino") -> Path:
    """Convert ``loaded`` to ``fmt`` once (nothing to do when the cache has it); returns the file."""
    from masklab.export import export_loaded

    path = converted_path(loaded, fmt)
    if not path.is_file():
        import time

        t0 = time.perf_counter()
        note(f"preparing the fast path: converting {loaded.spec.name} to {fmt} once (cached in {path.parent})")
        export_loaded(loaded, fmt=fmt, out=path)
        timed_note(f"prepared {loaded.spec.name} for {fmt}", t0)
    return path


def worth_preparing(*, images: int, seconds_per_image: float) -> bool:
    """Whether converting first repays itself over a run of ``images`` more images that take
    ``seconds_per_image`` each eagerly: the time saved (:data:`PREPARED_SAVING` of each image) must exceed
    the conversion's estimated cost (:data:`CONVERT_FIXED_S` + :data:`CONVERT_IMAGES` eager images)."""
    cost = CONVERT_FIXED_S + CONVERT_IMAGES * seconds_per_image
    return images * seconds_per_image * PREPARED_SAVING > cost


_WARNED: set[str] = set()


def resolve_precision(precision: str, *, device: str, strict: bool = False) -> str:
    """The precision that runs: ``precision``, unless it is a reduced one this CPU only emulates (then
    fp32, with a one-time :class:`PrecisionWarning`; ``strict=True`` raises instead). CUDA: unchanged."""
    if device != "cpu" or precision in ("fp32", "int8"):
        return precision
    cpu = cpu_features()
    if cpu.native(precision):
        return precision
    message = (f"precision {precision!r} is emulated on this CPU ({cpu.model}: no native {precision}, "
               f"flags: {' '.join(cpu.flags) or 'none of note'}) and would run 2-3x slower than fp32")
    if strict:
        raise UsageError(f"{message}; use --precision fp32 (exact) or int8, or drop --strict-precision to fall back")
    if precision not in _WARNED:
        _WARNED.add(precision)
        warnings.warn(f"{message}: running the exact fp32 path instead", PrecisionWarning, stacklevel=3)
    return "fp32"


def make_runtime(loaded: LoadedModel, settings: InferenceSettings, *, device: str) -> Runtime:
    """The runtime for ``loaded`` under ``settings`` (its ``backend``, ``precision``, ``threads`` and, for
    exported cores, ``score_thresh``) on ``device`` (already resolved: ``"cpu"`` or ``"cuda[:N]"``).
    ``settings.precision`` should already be :func:`resolve_precision`'s answer (the Segmenter does that)."""
    backend, precision = settings.backend, settings.precision
    if loaded.spec.arch == "matterport_resnet101":  # its own graph and runtimes
        return _matterport_runtime(loaded, settings, device)
    fmt = loaded.export_format
    if fmt is not None:  # an exported file: only its own runtime can run it
        if backend not in ("auto", fmt):
            raise UsageError(f"{loaded.weights_source} is a {fmt} export: use backend 'auto' or '{fmt}', not {backend!r}")
        return _file_runtime(fmt, loaded.weights_source, _file_precision(loaded, settings), device=device)
    if precision == "int8":  # the model `masklab quantize` calibrated, next to the fp32 conversion
        return _int8_runtime(loaded, settings, device=device)
    on_cpu = not device.startswith("cuda")
    if backend == "auto" and on_cpu and loaded.prepared is not None:
        return _file_runtime("openvino", str(loaded.prepared), settings, device=device)
    if backend == "auto":  # see the module docstring
        backend = "torch" if on_cpu and precision == "fp32" else "torch-fast"
    if backend == "torch" and precision == "fp32":
        from masklab.runtime.torch import TorchRuntime

        return TorchRuntime(_module(loaded), device=device)
    if backend in ("torch", "torch-fast"):  # reduced precision in torch = autocast, in the fast runtime
        from masklab.runtime.torch_fast import TorchFastRuntime

        return TorchFastRuntime(_module(loaded), device=device, precision=precision)
    if not on_cpu and backend == "openvino":
        raise UsageError("the openvino backend runs on the CPU here; use --device cpu or backend torch-fast")
    path = loaded.prepared if backend == "openvino" and loaded.prepared is not None else prepare(loaded, backend)
    return _file_runtime(backend, str(path), settings, device=device)


def _module(loaded: LoadedModel):
    if loaded.module is None:  # found prepared, then asked for another runtime: build the network after all
        raise UsageError(f"{loaded.spec.name}: this runtime needs the torch network; load it with backend 'torch'")
    return loaded.module


def _matterport_runtime(loaded: LoadedModel, settings: InferenceSettings, device: str) -> Runtime:
    """matterport's graph: eager torch (the reference), or its networks in OpenVINO on the CPU
    (``backend="openvino"``, fp32 exact or bf16; converted once and cached). ``auto``: OpenVINO fp32 when
    the conversion is in the cache (``masklab models --prepare matterport_r101_coco``), else eager."""
    backend, precision = settings.backend, settings.precision
    found = None  # the cached export auto found: its key hashes every weight (ResNet-101: ~250 MB), once
    if backend == "auto" and precision == "fp32" and not device.startswith("cuda") and openvino_installed():
        from masklab.runtime.matterport_ov import find_export

        found = find_export(loaded.module)
        if found is not None:
            backend = "openvino"
    if backend in ("auto", "torch") and precision == "fp32":
        from masklab.models.matterport.runtime import MatterportRuntime

        return MatterportRuntime(loaded.module, device=device)
    if backend == "openvino" and precision in ("fp32", "bf16") and not device.startswith("cuda"):
        from masklab.runtime.matterport_ov import MatterportOpenVINORuntime, prepared_export

        threads = settings.threads or thread_budget()
        config = loaded.module.config
        path = found or prepared_export(loaded.module)
        return MatterportOpenVINORuntime(path, precision=precision, threads=threads, config=config)
    raise UsageError(
        f"{loaded.spec.name} runs with backend 'torch' (fp32) or 'openvino' (fp32 or bf16, on the CPU); "
        f"found backend {backend!r}, precision {precision!r}, device {device!r}"
    )


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
    from masklab.runtime import exported

    kw = {"precision": settings.precision, "score_thresh": settings.score_thresh}
    threads = settings.threads or thread_budget()  # the entry point's choice; never imports torch to ask
    if fmt == "openvino":
        if device.startswith("cuda"):
            raise UsageError("an OpenVINO export runs on the CPU here; use --device cpu")
        return exported.OpenVINORuntime(path, threads=threads, **kw)
    if fmt == "onnx":
        return exported.OnnxRuntime(path, threads=threads, device=device, **kw)
    return exported.TorchScriptRuntime(path, device=device, **kw)
