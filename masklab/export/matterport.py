"""The matterport port's networks as OpenVINO IR: the learned parts only, in three files.

matterport's graph interleaves networks with data-dependent glue (top-k, per-class NMS, pyramid ROI
align with boxes chosen at run time). The glue is cheap and stays in :mod:`masklab.models.matterport.ops`
(the same code the eager port runs); the arithmetic goes to OpenVINO:

- ``features.xml``: molded image float32 (1, 3, S, S) -> P2, P3, P4, P5, P6 (1, 256, S/s, S/s),
  RPN fg probabilities (1, A), RPN raw deltas (1, A, 4) (backbone + FPN + RPN head: ~97% of the FLOPs);
- ``classifier.xml``: pooled ROIs (R, 256, 7, 7) -> class probabilities (R, K), raw deltas (R, K, 4);
- ``mask.xml``: pooled detections (N, 256, 14, 14) -> sigmoid masks (N, K, 28, 28);
- ``matterport.json``: the :class:`~masklab.models.matterport.MatterportConfig` the networks were built
  with (``S`` = ``IMAGE_MAX_DIM`` is baked into ``features.xml``) and what made the files.

IR weights are saved as fp32 (``compress_to_fp16=False``): reduced precision is a runtime choice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

from masklab._version import __version__
from masklab.errors import UsageError
from masklab.io.atomic import atomic_write_json
from masklab.models.matterport.config import MatterportConfig
from masklab.optional import require

__all__ = ["PARTS", "CONFIG_FILE", "export_matterport_openvino", "matterport_export_key", "read_export_config"]

PARTS = ("features", "classifier", "mask")
CONFIG_FILE = "matterport.json"


def _features_core(module):
    import torch

    class _Features(torch.nn.Module):
        """Backbone + FPN + RPN head of a :class:`MatterportMaskRCNN` as one traceable module."""

        def __init__(self, m) -> None:
            super().__init__()
            self.m = m

        def forward(self, image):
            _, p, probs, deltas = self.m.features(image)
            return (*p, probs, deltas)

    return _Features(module).eval()


# The config fields that shape the networks (the rest, DETECTION_* and the proposal settings, is glue
# that runs outside the IR: changing it needs no new conversion).
_NETWORK_FIELDS = ("NUM_CLASSES", "IMAGE_MAX_DIM", "TOP_DOWN_PYRAMID_SIZE", "FPN_CLASSIF_FC_LAYERS_SIZE",
                   "POOL_SIZE", "MASK_POOL_SIZE", "RPN_ANCHOR_RATIOS")


def matterport_export_key(module) -> str:
    """20 hex digits over the weights' bytes, the network-shaping config fields and the library
    versions: a change in any of them means a new conversion."""
    import torch

    openvino = require("openvino")  # without its converter (masklab.optional): this runs on the run path
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue
        t = v.detach().cpu().contiguous()
        h.update(f"{k}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    shape = {k: getattr(module.config, k) for k in _NETWORK_FIELDS}
    h.update(json.dumps([shape, __version__, torch.__version__, openvino.__version__]).encode())
    return h.hexdigest()[:20]


def export_matterport_openvino(module, out_dir: str | os.PathLike) -> Path:
    """Convert ``module`` (a :class:`~masklab.models.matterport.MatterportMaskRCNN`) to the three IR files
    in ``out_dir`` (see the module docstring); written in a sibling folder and renamed into place, so a
    reader never sees half an export. Returns ``out_dir``."""
    ov = require("openvino")
    import torch

    from masklab.models.matterport.network import MatterportMaskRCNN

    if not isinstance(module, MatterportMaskRCNN):
        raise UsageError(f"export_matterport_openvino converts a MatterportMaskRCNN, found {type(module).__name__}")
    module = module.eval().cpu()
    cfg = module.config
    s, c = cfg.IMAGE_MAX_DIM, cfg.TOP_DOWN_PYRAMID_SIZE
    parts = {
        "features": (_features_core(module), torch.zeros(1, 3, s, s), [1, 3, s, s]),
        "classifier": (module.classifier, torch.zeros(2, c, cfg.POOL_SIZE, cfg.POOL_SIZE), [-1, c, cfg.POOL_SIZE, cfg.POOL_SIZE]),
        "mask": (module.mask_head, torch.zeros(2, c, cfg.MASK_POOL_SIZE, cfg.MASK_POOL_SIZE), [-1, c, cfg.MASK_POOL_SIZE, cfg.MASK_POOL_SIZE]),
    }
    out = Path(out_dir)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with torch.inference_mode():
            for name, (net, example, shape) in parts.items():
                model = ov.convert_model(net, example_input=example, input=[(shape, ov.Type.f32)])
                ov.save_model(model, str(tmp / f"{name}.xml"), compress_to_fp16=False)
        atomic_write_json(
            tmp / CONFIG_FILE,
            {"config": dataclasses.asdict(cfg), "masklab_version": __version__, "openvino_version": ov.__version__},
        )
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def read_export_config(export_dir: str | os.PathLike) -> MatterportConfig:
    """The :class:`MatterportConfig` an export was made with (lists back to tuples)."""
    path = Path(export_dir) / CONFIG_FILE
    missing = [p for p in PARTS if not (Path(export_dir) / f"{p}.xml").is_file()]
    if not path.is_file() or missing:
        raise UsageError(
            f"{export_dir} is not a matterport OpenVINO export (expected {CONFIG_FILE} and "
            f"{', '.join(p + '.xml' for p in PARTS)}; missing {missing or [CONFIG_FILE]})"
        )
    raw = json.loads(path.read_text())["config"]
    return MatterportConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
