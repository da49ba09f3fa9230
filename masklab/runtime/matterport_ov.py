"""matterport's graph with its networks in OpenVINO (an export made by :mod:`masklab.export.matterport`).

Everything outside the three networks is the eager port's own code: molding, the proposal layer,
pyramid ROI align, the detection layer and unmolding (:class:`MatterportRuntime`), so the results differ
from eager torch only by the networks' float rounding (checked by ``tests/test_matterport_openvino.py``).

Precision: ``fp32`` sets ``INFERENCE_PRECISION_HINT=f32`` (exact; the CPU plugin would otherwise pick
bf16 by itself on CPUs that have it); ``bf16`` sets ``bf16`` (fast only where the CPU has native bf16:
AVX512-BF16 or AMX; elsewhere OpenVINO emulates it, slower than fp32).
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch

from masklab.errors import UsageError
from masklab.export.matterport import export_matterport_openvino, matterport_export_key, read_export_config
from masklab.models.matterport import ops
from masklab.models.matterport.config import MatterportConfig
from masklab.models.matterport.network import HeadOutputs, detect_and_mask, heads_from_features
from masklab.models.matterport.runtime import MatterportRuntime
from masklab.models.weights import cache_dir
from masklab.optional import require
from masklab.runtime.exported import OV_PRECISION

__all__ = ["MatterportOpenVINORuntime", "prepared_export"]


def find_export(module) -> str | None:
    """The cached OpenVINO export of ``module`` when there is one (nothing is converted), else None."""
    out = cache_dir() / "exports" / f"matterport-{matterport_export_key(module)}"
    try:
        read_export_config(out)
    except UsageError:
        return None
    return str(out)


def prepared_export(module) -> str:
    """The OpenVINO export of ``module`` in ``$MASKLAB_HOME/exports/``, converted on first use (a one-line
    note on stderr; ~1-2 min for ResNet-101 at 1024) and reused while the weights, the network's shape
    and the library versions stay the same."""
    out = cache_dir() / "exports" / f"matterport-{matterport_export_key(module)}"
    try:
        read_export_config(out)
    except UsageError:
        print(f"masklab: converting matterport's networks to openvino once (cached in {out})", file=sys.stderr)
        export_matterport_openvino(module, out)
    return str(out)


class _Net:
    """One compiled IR as a torch-in, torch-out callable (CPU float32)."""

    def __init__(self, core, path: str, config: dict) -> None:
        self.compiled = core.compile_model(core.read_model(path), "CPU", config)
        self.request = self.compiled.create_infer_request()

    def __call__(self, x: torch.Tensor):
        res = self.request.infer([np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)])
        outs = [torch.from_numpy(np.array(res[o])) for o in self.compiled.outputs]
        return outs if len(outs) > 1 else outs[0]


class MatterportOpenVINORuntime(MatterportRuntime):
    """Runs an export folder (``features.xml``, ``classifier.xml``, ``mask.xml``, ``matterport.json``).

    Args:
        export_dir: the folder :func:`~masklab.export.matterport.export_matterport_openvino` wrote.
        precision: ``fp32`` (exact) or ``bf16`` (see the module docstring).
        threads: CPU threads for inference (None: OpenVINO's default, every CPU).
        config: detection settings to use instead of the export's (``DETECTION_*``; the input size and
            the rest must be the export's).
    """

    name = "openvino"

    def __init__(
        self,
        export_dir: str | os.PathLike,
        *,
        precision: str = "fp32",
        threads: int | None = None,
        config: MatterportConfig | None = None,
    ) -> None:
        ov = require("openvino")
        if precision not in ("fp32", "bf16"):
            raise UsageError(f"the matterport OpenVINO runtime runs fp32 or bf16, found precision {precision!r}")
        built = read_export_config(export_dir)
        if config is not None and config.image_shape != built.image_shape:
            raise UsageError(f"config's IMAGE_MAX_DIM {config.IMAGE_MAX_DIM} differs from the export's {built.IMAGE_MAX_DIM}")
        self.config = config or built
        self.precision = precision
        self.device = torch.device("cpu")
        self.module = None  # no torch network: the three IRs below run it
        ov_config = {"INFERENCE_PRECISION_HINT": OV_PRECISION[precision], "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            ov_config["INFERENCE_NUM_THREADS"] = int(threads)
        core = ov.Core()
        self.features, self.classifier, self.mask_head = (
            _Net(core, os.path.join(export_dir, f"{part}.xml"), ov_config) for part in ("features", "classifier", "mask")
        )
        self._anchors = torch.from_numpy(ops.generate_anchors(self.config))

    def forward_heads(self, x: torch.Tensor) -> HeadOutputs:
        *p, probs, deltas = self.features(x)
        return heads_from_features(
            p, probs[0], deltas[0], classifier=self._classify, anchors=self._anchors, config=self.config
        )

    def _classify(self, pooled: torch.Tensor):
        if pooled.shape[0] == 0:
            k = self.config.NUM_CLASSES
            return pooled.new_zeros((0, k)), pooled.new_zeros((0, k, 4))
        return self.classifier(pooled)

    def detect_and_mask(self, heads: HeadOutputs, window, cfg: MatterportConfig):
        return detect_and_mask(heads, window, mask_head=self.mask_head, config=cfg)
