"""Backends that run the exported tensor core (:mod:`masklab.export.core`) in another runtime.

Each runs the core once per image (any size) and pastes the 28x28 masks with the shared
:func:`~masklab.export.core.core_to_detections`. Precision per runtime:

- OpenVINO: ``fp32`` sets ``INFERENCE_PRECISION_HINT=f32`` (exact; the CPU plugin would otherwise pick
  bf16 by itself on CPUs that have it), ``bf16`` sets ``bf16`` explicitly, ``fp16`` sets ``f16``;
  ``int8`` runs an int8 IR (``masklab quantize``) with ``f32`` for the layers it left unquantised.
- ONNX Runtime and TorchScript: ``fp32`` only.
"""

from __future__ import annotations

import os
import queue
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from masklab.errors import UsageError
from masklab.export.core import CoreOutputs, core_to_detections
from masklab.hardware import thread_budget
from masklab.optional import require
from masklab.structures.detections import Detections

__all__ = ["OpenVINORuntime", "OnnxRuntime", "TorchScriptRuntime", "OV_PRECISION"]

#: precision -> INFERENCE_PRECISION_HINT; an int8 IR (``masklab quantize``) runs its quantised layers in int8
#: whatever the hint, and f32 keeps the layers it left unquantised (coordinates, RoI pooling) exact
OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32"}


def _image_input(image: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> float32 (3, H, W) in [0, 1], the core's input (same as ``to_tensor``)."""
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / np.float32(255)


class _CoreRuntime:
    """Common part: run the core per image, drop scores below ``score_thresh``, paste masks."""

    name = "core"

    def __init__(self, *, score_thresh: float | None, mask_threshold: float) -> None:
        self.score_thresh = score_thresh
        self.mask_threshold = mask_threshold

    def run_core(self, x: np.ndarray) -> CoreOutputs:  # pragma: no cover - each runtime overrides
        raise NotImplementedError

    def predict(self, images: Sequence[np.ndarray]) -> list[Detections]:
        out = []
        for im in images:
            core = self.run_core(_image_input(im))
            if self.score_thresh is not None:
                keep = np.asarray(core.scores) >= self.score_thresh  # before pasting: no work on dropped ones
                core = core.select(keep)
            out.append(core_to_detections(core, im.shape[:2], mask_threshold=self.mask_threshold))
        return out


class OpenVINORuntime(_CoreRuntime):
    """OpenVINO CPU runtime on an IR file (``.xml``) or an in-memory ``ov.Model``.

    Args:
        model: path to ``.xml`` (its ``.bin`` next to it) or an ``openvino.Model``.
        precision: ``fp32`` (exact), ``bf16``, ``fp16`` or ``int8`` (an int8 IR; see the module docstring).
        threads: CPU threads for inference (default: every CPU this process may use).
        score_thresh: extra score filter applied after the model (None: the baked threshold only).
        throughput: compile for many images (OpenVINO's THROUGHPUT hint: several streams, each image on
            fewer cores; a folder run's choice, see :meth:`for_throughput`); default: for the lowest
            latency of one image.
    """

    def __init__(self, model, *, precision: str = "fp32", threads: int | None = None,
                 score_thresh: float | None = None, mask_threshold: float = 0.5, device: str = "CPU",
                 throughput: bool = False) -> None:
        super().__init__(score_thresh=score_thresh, mask_threshold=mask_threshold)
        self._args = {"model": model, "precision": precision, "threads": threads, "score_thresh": score_thresh,
                      "mask_threshold": mask_threshold, "device": device}
        ov = require("openvino")
        if precision not in OV_PRECISION:
            raise UsageError(f"openvino precision must be one of {list(OV_PRECISION)}, found {precision!r}")
        core = ov.Core()
        if isinstance(model, (str, os.PathLike)):
            path = Path(model)
            _compile_cache(core, path)
            # compiled from the file, a cached model is found without reading the graph (~0.1 s less)
            model = core.read_model(str(path)) if precision == "int8" else str(path)
        if precision == "int8" and not any(op.get_type_name() == "FakeQuantize" for op in model.get_ops()):
            raise UsageError("precision int8 needs an int8 model (`masklab quantize`); this OpenVINO model is not quantised")
        threads = int(threads) if threads else None
        config = {"INFERENCE_PRECISION_HINT": OV_PRECISION[precision]}
        if throughput:  # OpenVINO picks the streams for the cores (2 of 1 thread each on 2 cores)
            config["PERFORMANCE_HINT"] = "THROUGHPUT"
        else:
            config.update({"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": _streams(threads)})
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(model, device, config)
        streams = max(1, int(self.compiled.get_property("NUM_STREAMS")))
        self.throughput = throughput
        self.streams = streams
        #: how many images may run at once (from as many threads): one per stream, plus one so that the numpy
        #: work around each inference (input conversion, mask pasting) overlaps the next one's inference
        self.concurrency = streams + 1
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(self.concurrency):
            self._requests.put(self.compiled.create_infer_request())
        self.threads = threads
        self.precision = precision
        self.name = "openvino"

    def for_throughput(self, on: bool = True) -> OpenVINORuntime:
        """This model compiled for many images (``on``) or for one image's latency; ``self`` when it already
        is. On 2 cores, two streams of one thread give 1.02x (Zen 4) to 1.03-1.05x (AMX Xeon) the images per
        second of one stream of two, OpenVINO alone (maskrcnn_resnet50_fpn_v2, 480x640; 1.13x before the
        exported graph lost its serial scatters); each image then takes about twice as long, and each new
        stream's first image ~0.5 s longer (OpenVINO creates its kernels for the shapes then)."""
        if on == self.throughput:
            return self
        return OpenVINORuntime(**self._args, throughput=on)

    def run_core(self, x: np.ndarray) -> CoreOutputs:
        request = self._requests.get()  # thread-safe: each caller runs on a request of its own
        try:
            res = request.infer([x])  # releases the GIL while the CPU plugin runs
            outs = [np.array(res[o]) for o in self.compiled.outputs]  # copies; a 5th: mask_iou
        finally:
            self._requests.put(request)
        return CoreOutputs.from_outputs(outs)


def _compile_cache(core, path: Path) -> None:
    """OpenVINO's compiled-model cache (``$MASKLAB_HOME/openvino-cache``) for a model read from a file: a
    later process compiles the same IR in ~0.17 s instead of ~0.64 s (maskrcnn_resnet50_fpn_v2, 2-core EPYC),
    a third of a prepared run's start-up. OpenVINO keys its entries on the model and the compile options; a
    cache folder that cannot be written is skipped (the model compiles as without one)."""
    from masklab.models.weights import cache_dir

    folder = cache_dir() / "openvino-cache"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if os.access(folder, os.W_OK):
            core.set_property({"CACHE_DIR": str(folder)})
    except OSError:
        pass


def _streams(threads: int | None) -> int:
    """OpenVINO CPU streams: one on small machines (every core on one image: the lowest latency); from 8
    cores, one stream per 4 cores, so that a folder run or a server keeps the extra cores busy with other
    images (each image then runs on 4 cores)."""
    n = threads or thread_budget()
    return 1 if n < 8 else n // 4


class OnnxRuntime(_CoreRuntime):
    """ONNX Runtime (CPU, or CUDA when ``device`` is cuda and onnxruntime-gpu is installed) on a ``.onnx``."""

    def __init__(self, path: str | os.PathLike, *, precision: str = "fp32", threads: int | None = None,
                 score_thresh: float | None = None, mask_threshold: float = 0.5, device: str = "cpu") -> None:
        super().__init__(score_thresh=score_thresh, mask_threshold=mask_threshold)
        ort = require("onnxruntime")
        if precision != "fp32":
            raise UsageError(f"the onnx backend runs fp32 only, found precision {precision!r} (try --backend openvino)")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # otherwise every call prints VerifyOutputSizes warnings for dynamic N
        if threads:
            opts.intra_op_num_threads = int(threads)
        providers = ["CPUExecutionProvider"]
        if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(Path(path)), sess_options=opts, providers=providers)
        self.precision = precision
        self.name = "onnx"

    def run_core(self, x: np.ndarray) -> CoreOutputs:
        return CoreOutputs.from_outputs(self.session.run(None, {"image": x}))  # a 5th output: mask_iou


class TorchScriptRuntime(_CoreRuntime):
    """A TorchScript export (``torch.jit.load``: the archive holds code, not pickled objects)."""

    def __init__(self, path: str | os.PathLike, *, precision: str = "fp32", device: str = "cpu",
                 score_thresh: float | None = None, mask_threshold: float = 0.5) -> None:
        import torch

        super().__init__(score_thresh=score_thresh, mask_threshold=mask_threshold)
        if precision != "fp32":
            raise UsageError(f"the torchscript backend runs fp32 only, found precision {precision!r}")
        self.device = torch.device(device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated": still supported
            self.module = torch.jit.load(str(path), map_location=self.device).eval()
        self.precision = precision
        self.name = "torchscript"

    def run_core(self, x: np.ndarray) -> CoreOutputs:
        import torch

        with torch.inference_mode():
            outs = self.module(torch.from_numpy(x).to(self.device))
        return CoreOutputs.from_outputs([o.cpu().numpy() for o in outs])
