"""Pick and build the backend behind :class:`~masklab.engine.segmenter.Segmenter` (one function, no registry).

=============== ================================================ =========================== ==========
backend         what runs                                        precisions                  exact fp32
=============== ================================================ =========================== ==========
``torch``       eager torchvision module (the reference)         fp32; bf16/fp16 -> autocast  yes
``torch-fast``  channels-last (+ autocast), CUDA batching        fp32, bf16, fp16 (CUDA)      yes
``openvino``    OpenVINO on the tensor core (.xml, or converted  fp32, bf16, fp16             yes
                once from the torch model and cached)
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
from pathlib import Path

from masklab.errors import UsageError

__all__ = ["BACKENDS", "PRECISIONS", "make_backend", "converted_path"]

BACKENDS = ("auto", "torch", "torch-fast", "openvino", "onnx", "torchscript")
PRECISIONS = ("fp32", "bf16", "fp16", "int8")
_FILE_BACKEND = {"onnx": "onnx", "openvino": "openvino", "torchscript": "torchscript"}


def _check_choice(backend: str, precision: str) -> None:
    if backend not in BACKENDS:
        raise UsageError(f"backend must be one of {', '.join(BACKENDS)}, found {backend!r}")
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, found {precision!r}")
    if precision == "int8":
        raise UsageError(
            "precision 'int8' is not available yet (post-training quantisation is not implemented); "
            "for speed use --precision bf16 and the knobs --min-size/--max-size, fewer proposals"
        )


def _state_digest(module) -> str:
    """sha256 over every tensor of the module's state dict (names, shapes, dtypes, bytes)."""
    import torch

    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        t = v.detach().cpu().contiguous()
        h.update(f"{k}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def converted_path(loaded, fmt: str) -> Path:
    """Where the one-time conversion of ``loaded`` to ``fmt`` is cached: ``$MASKLAB_HOME/exports/<key>/``.

    The key covers the weights (bytes), the baked options, the format and the library versions, so a
    change in any of them converts again."""
    import torch

    from masklab import __version__
    from masklab.export import FORMATS, model_card
    from masklab.models.weights import cache_dir

    card = model_card(loaded)
    versions = [__version__, torch.__version__]
    if fmt == "openvino":
        import openvino

        versions.append(openvino.__version__)
    key_src = json.dumps([_state_digest(loaded.module), card["options"], card["categories"], fmt, versions])
    key = hashlib.sha256(key_src.encode()).hexdigest()[:20]
    return cache_dir() / "exports" / f"{loaded.spec.name}-{key}" / f"core{FORMATS[fmt]}"


def _ensure_converted(loaded, fmt: str) -> Path:
    import sys

    from masklab.export import export_loaded

    path = converted_path(loaded, fmt)
    if not path.is_file():
        print(f"masklab: converting {loaded.spec.name} to {fmt} once (cached in {path.parent})", file=sys.stderr)
        export_loaded(loaded, fmt=fmt, out=path)
    return path


def make_backend(
    loaded,
    *,
    backend: str = "auto",
    precision: str = "fp32",
    device: str = "cpu",
    threads: int | None = None,
    score_thresh: float | None = None,
):
    """Build the backend for ``loaded`` (a :class:`~masklab.models.loading.LoadedModel`).

    ``score_thresh`` is applied after exported cores (whose own threshold was baked in at export)."""
    from masklab.models.backend import TorchBackend

    _check_choice(backend, precision)
    fmt = getattr(loaded, "export_format", None)
    if fmt is not None:  # an exported file: only its own runtime can run it
        want = _FILE_BACKEND[fmt]
        if backend not in ("auto", want):
            raise UsageError(f"{loaded.weights_source} is a {fmt} export: use backend 'auto' or '{want}', not {backend!r}")
        return _file_backend(fmt, loaded.weights_source, precision=precision, device=device, threads=threads,
                             score_thresh=score_thresh)

    if backend == "auto":  # see the module docstring: eager on the CPU, fast on CUDA, never a conversion
        backend = "torch-fast" if device.startswith("cuda") or precision != "fp32" else "torch"
    if backend == "torch":
        if precision == "fp32":
            return TorchBackend(loaded.module, device=device)
        backend = "torch-fast"  # reduced precision in torch = autocast, which lives in the fast backend
    if backend == "torch-fast":
        from masklab.models.backends.torch import TorchFastBackend

        return TorchFastBackend(loaded.module, device=device, precision=precision)
    if backend == "torchscript":
        path = _ensure_converted(loaded, "torchscript")
    else:
        if device.startswith("cuda") and backend == "openvino":
            raise UsageError("the openvino backend runs on the CPU here; use --device cpu or backend torch-fast")
        path = _ensure_converted(loaded, backend)
    return _file_backend(backend, str(path), precision=precision, device=device, threads=threads,
                         score_thresh=score_thresh)


def _file_backend(fmt: str, path: str, *, precision: str, device: str, threads: int | None, score_thresh):
    from masklab.models.backends import runtimes

    if fmt == "openvino":
        if device.startswith("cuda"):
            raise UsageError("an OpenVINO export runs on the CPU here; use --device cpu")
        return runtimes.OpenVINOBackend(path, precision=precision, threads=threads, score_thresh=score_thresh)
    if fmt == "onnx":
        return runtimes.OnnxRuntimeBackend(path, precision=precision, threads=threads, score_thresh=score_thresh,
                                           device=device)
    return runtimes.TorchScriptBackend(path, precision=precision, device=device, score_thresh=score_thresh)
