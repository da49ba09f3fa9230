"""Read matterport-layout Keras ``.h5`` weights (``mask_rcnn_coco.h5``) into :class:`MatterportMaskRCNN`.

Only arrays are read, with h5py, by the names of weight-holding layers: nothing in the file is
executed (Keras model files can carry Lambda-layer code; we never look at it). Weightless layer names
(``activation_1``, ``add``...) differ between Keras versions and are ignored, as is the empty
``top_level_model_weights`` group newer Keras writes.

Keras -> torch layouts: Conv2D ``[kh, kw, in, out]`` -> ``permute(3, 2, 0, 1)``; Dense ``[in, out]`` ->
``.T``; Conv2DTranspose ``[kh, kw, out, in]`` -> ``permute(3, 2, 0, 1)`` = torch ``[in, out, kh, kw]``
(no spatial flip); BatchNorm gamma/beta/moving_mean/moving_variance -> weight/bias/running_mean/running_var.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from masklab.errors import WeightsMismatchError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["HDF5_MAGIC", "looks_like_h5", "is_matterport_h5", "read_keras_weights", "keras_to_state_dict", "load_h5_weights"]

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
# Weight-holding layers every matterport Mask R-CNN file has; used to recognise the file by content.
_SIGNATURE = ("conv1", "res2a_branch2a", "fpn_c5p5", "mrcnn_class_logits", "mrcnn_mask")
_BN_FIELDS = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}


def _text(x) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def _root(f):
    """The group holding the layer groups: the file itself (``save_weights``) or ``model_weights`` (``save``)."""
    if "layer_names" in f.attrs:
        return f
    if "model_weights" in f and "layer_names" in f["model_weights"].attrs:
        return f["model_weights"]
    return None


def looks_like_h5(path: str | os.PathLike) -> bool:
    """True if ``path`` is a file starting with the HDF5 signature."""
    try:
        with open(path, "rb") as fh:
            return fh.read(8) == HDF5_MAGIC
    except OSError:
        return False


def is_matterport_h5(path: str | os.PathLike) -> bool:
    """True if ``path`` is an HDF5 file whose layers include matterport Mask R-CNN's weight layers."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            if fh.read(8) != HDF5_MAGIC:
                return False
    except OSError:
        return False
    import h5py

    try:
        with h5py.File(p, "r") as f:
            root = _root(f)
            if root is None:
                return False
            names = {_text(n) for n in root.attrs["layer_names"]}
    except OSError:
        return False
    return all(n in names for n in _SIGNATURE)


def read_keras_weights(path: str | os.PathLike) -> Iterator[tuple[str, str, np.ndarray]]:
    """Yield ``(layer, kind, float32 array in Keras layout)`` for every weight in the file.

    ``layer`` is the weight's own layer (``rpn_conv_shared`` inside the ``rpn_model`` group); ``kind`` is
    ``kernel``, ``bias``, ``gamma``... Raises :class:`WeightsMismatchError` if the file is not a Keras
    weights file.
    """
    import h5py

    try:
        f = h5py.File(Path(path), "r")
    except OSError as e:
        raise WeightsMismatchError(f"{path}: not a readable HDF5 file ({e})") from None
    with f:
        root = _root(f)
        if root is None:
            raise WeightsMismatchError(
                f"{path}: not a Keras weights file (expected a root attribute 'layer_names', found attributes "
                f"{sorted(f.attrs)} and groups {sorted(f)[:5]})"
            )
        for group_name in (_text(n) for n in root.attrs["layer_names"]):
            if group_name not in root:
                raise WeightsMismatchError(f"{path}: layer {group_name!r} is listed in 'layer_names' but has no group")
            group = root[group_name]
            wnames = [_text(n) for n in group.attrs.get("weight_names", [])]
            # A group is one layer (named by the group: inner auto-names of TimeDistributed layers vary
            # between Keras versions) unless it is a nested model such as ``rpn_model``, whose weights
            # carry their own layer names.
            nested = len({w.rpartition("/")[0] for w in wnames}) > 1
            for wname in wnames:
                ds = group.get(wname)
                if not isinstance(ds, h5py.Dataset):
                    raise WeightsMismatchError(f"{path}: weight {group_name}/{wname} is listed but not stored")
                prefix, _, leaf = wname.rpartition("/")
                layer = prefix.rsplit("/", 1)[-1] if nested else group_name
                yield layer, leaf.split(":")[0], np.asarray(ds[()], dtype=np.float32)


def _convert(module: nn.Module, layer: str, kind: str, value: np.ndarray) -> tuple[str, np.ndarray]:
    """(torch parameter name, array in torch layout) for one Keras weight of ``module``."""
    from torch import nn  # torch only when weights are converted: sniffing a file needs none
    if isinstance(module, nn.BatchNorm2d):
        if kind not in _BN_FIELDS:
            raise WeightsMismatchError(f"layer {layer!r}: unexpected BatchNorm weight {kind!r}")
        return _BN_FIELDS[kind], value
    if kind == "bias":
        return "bias", value
    if kind != "kernel":
        raise WeightsMismatchError(f"layer {layer!r}: unexpected weight {kind!r} (expected kernel or bias)")
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        if value.ndim != 4:
            raise WeightsMismatchError(f"layer {layer!r}: expected a 4-d conv kernel, found shape {value.shape}")
        return "weight", value.transpose(3, 2, 0, 1)
    if isinstance(module, nn.Linear):
        if value.ndim != 2:
            raise WeightsMismatchError(f"layer {layer!r}: expected a 2-d Dense kernel, found shape {value.shape}")
        return "weight", value.T
    raise WeightsMismatchError(f"layer {layer!r}: no conversion for {type(module).__name__}")


def keras_to_state_dict(model: nn.Module, weights) -> dict[str, torch.Tensor]:
    import torch

    """Map ``(layer, kind, keras array)`` triples onto ``model``'s state dict keys, checking every shape.

    The model's modules are found by their last name component (= the Keras layer name). Raises
    :class:`WeightsMismatchError` naming the missing, unexpected or misshapen weights.
    """
    modules = {name.rsplit(".", 1)[-1]: (name, m) for name, m in model.named_modules() if name}
    expected = dict(model.state_dict())
    state: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for layer, kind, value in weights:
        if layer not in modules:
            unknown.append(f"{layer}/{kind}")
            continue
        prefix, module = modules[layer]
        pname, arr = _convert(module, layer, kind, value)
        key = f"{prefix}.{pname}"
        if key not in expected:
            unknown.append(f"{layer}/{kind}")
            continue
        if tuple(arr.shape) != tuple(expected[key].shape):
            raise WeightsMismatchError(
                f"layer {layer!r} weight {kind!r}: expected shape {tuple(expected[key].shape)} (torch layout), "
                f"found {tuple(arr.shape)} -- not matterport's ResNet-101 COCO model (81 classes)?"
            )
        state[key] = torch.from_numpy(np.ascontiguousarray(arr))
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    if unknown or missing:
        raise WeightsMismatchError(
            "weights do not match matterport's Mask R-CNN (ResNet-101 + FPN): "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unknown)} unexpected (e.g. {unknown[:3]})"
        )
    return state


def load_h5_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a matterport-layout ``.h5`` into ``model`` (strict: every weight present, every shape right)."""
    state = keras_to_state_dict(model, read_keras_weights(path))
    model.load_state_dict(state, strict=False)  # num_batches_tracked buffers are not in Keras files
