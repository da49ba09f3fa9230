"""How the ``matterport_r101_coco`` entry is built and loaded (kept here, out of the shared loader).

``build_module`` accepts the option names the rest of masklab passes
(``score_thresh``, ``min_size``...: the settings field names) and maps them onto matterport's config names;
:func:`load_h5_module` loads a ``.h5`` into a freshly built network.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch

from masklab.errors import UsageError, WeightsMismatchError, WeightsUnavailableError
from masklab.io.atomic import atomic_write_bytes
from masklab.models.matterport.config import MatterportConfig
from masklab.models.matterport.h5 import is_matterport_h5, load_h5_weights, looks_like_h5
from masklab.models.matterport.network import MatterportMaskRCNN
from masklab.models.weights import cache_dir, weights_path

__all__ = ["build_module", "load_h5_module", "default_weights", "converted_path"]

# InferenceSettings field (what masklab.models.loading.module_kwargs passes) -> matterport config name
_KW_TO_CONFIG = {
    "score_thresh": "DETECTION_MIN_CONFIDENCE",
    "nms_thresh": "DETECTION_NMS_THRESHOLD",
    "max_detections": "DETECTION_MAX_INSTANCES",
    "min_size": "IMAGE_MIN_DIM",
    "max_size": "IMAGE_MAX_DIM",
    "proposals": "POST_NMS_ROIS_INFERENCE",
}


def build_module(*, num_classes: int = 81, **kwargs) -> MatterportMaskRCNN:
    """The network with random weights; ``kwargs`` are :class:`~masklab.settings.InferenceSettings` field
    names (listed in ``_KW_TO_CONFIG``), mapped onto matterport's config.

    ``max_size`` (``IMAGE_MAX_DIM``) is the side of the square input and must be a multiple of 64.
    """
    unknown = sorted(set(kwargs) - set(_KW_TO_CONFIG))
    if unknown:
        raise UsageError(f"matterport_r101_coco does not take {unknown}")
    values = {_KW_TO_CONFIG[k]: v for k, v in kwargs.items() if v is not None}
    cfg = dataclasses.replace(MatterportConfig(NUM_CLASSES=num_classes), **values)
    if cfg.IMAGE_MIN_DIM > cfg.IMAGE_MAX_DIM:
        raise UsageError(f"min_size ({cfg.IMAGE_MIN_DIM}) must not exceed max_size ({cfg.IMAGE_MAX_DIM})")
    return MatterportMaskRCNN(cfg).eval()


def default_weights(spec) -> Path:
    """The cached ``mask_rcnn_coco.h5``; a clear error with the download line when it is not there."""
    cached = weights_path(spec.weights)
    if cached.is_file():
        return cached
    raise WeightsUnavailableError(
        f"matterport's {spec.weights.filename} is not downloaded automatically (matterport publishes no checksum "
        f"to verify it against).\n  Download it ({spec.weights.size_bytes:,} bytes) from {spec.weights.url}\n"
        f"  then pass --weights PATH (Segmenter(..., weights=PATH)), or save it as {cached}"
    )


def converted_path(path: Path) -> Path:
    """Where the safetensors conversion of the ``.h5`` at ``path`` is cached: keyed by the file's absolute
    path, size and modification time, so a replaced file is converted again."""
    import hashlib

    st = path.stat()
    where = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    return cache_dir() / "converted" / f"{path.stem}-{where}-{st.st_size}-{st.st_mtime_ns}.safetensors"


def _load_with_cache(module: MatterportMaskRCNN, path: Path) -> None:
    """Load the ``.h5`` (converted once to a safetensors file in the cache: later loads skip the h5
    parsing and layout conversion). A cache that cannot be written is skipped silently."""
    from safetensors.torch import load_file, save

    cached = converted_path(path)
    expected = {k: v.shape for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}
    if cached.is_file():
        state = load_file(cached)
        if {k: v.shape for k, v in state.items()} == expected:  # else: stale or foreign, convert again
            module.load_state_dict(state, strict=False)
            return
    load_h5_weights(module, path)
    state = {k: v for k, v in module.state_dict().items() if k in expected}
    try:
        atomic_write_bytes(cached, save(state, metadata={"source": path.name, "format": "pt"}))
    except OSError:
        pass


def load_h5_module(build: Callable[[], MatterportMaskRCNN], path: Path) -> MatterportMaskRCNN:
    """Build the network with ``build()`` on the meta device (no random init: every parameter comes from
    the file) and load matterport's ``.h5`` at ``path`` into it."""
    if not path.is_file():
        raise UsageError(f"weights file {path} does not exist")
    if not is_matterport_h5(path):
        what = "an HDF5 file without matterport's layers" if looks_like_h5(path) else "not an HDF5 file"
        raise WeightsMismatchError(f"{path}: expected matterport's Keras weights (.h5, e.g. mask_rcnn_coco.h5), found {what}")
    with torch.device("meta"):
        module = build()
    module = module.to_empty(device="cpu")
    for name, buf in module.named_buffers():
        if name.endswith("num_batches_tracked"):  # not in Keras files; unused in eval mode
            buf.zero_()
    _load_with_cache(module, path)
    return module
