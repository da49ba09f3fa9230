"""Recognise an exported model file (``masklab export``) and read the model card inside it.

Where the card lives: ONNX ``metadata_props["masklab.card"]``; OpenVINO ``rt_info["masklab"]["card"]``;
TorchScript the archive's extra file ``masklab_card.json`` (a ``FILE.card.json`` sidecar is written too,
for people and other languages). Reading lives here, with the other model sources; writing lives in
:mod:`masklab.export`, which depends on this module and never the reverse.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

from masklab.errors import UsageError
from masklab.models.card import ModelCard
from masklab.optional import require

__all__ = ["FORMATS", "CARD_KEY", "TS_CARD_FILE", "detect_export_format", "read_card"]

#: format name -> file suffix.
FORMATS = {"onnx": ".onnx", "openvino": ".xml", "torchscript": ".pt"}
CARD_KEY = "masklab.card"
TS_CARD_FILE = "masklab_card.json"


def _is_torchscript_archive(path: Path) -> bool:
    """TorchScript archives hold a ``code/`` folder; ``torch.save`` state dicts do not."""
    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in n or n.startswith("code/") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def detect_export_format(path: str | os.PathLike) -> str | None:
    """``"onnx"``, ``"openvino"`` or ``"torchscript"`` for an exported file, None otherwise (by content for
    ``.pt``/``.pth``, which may also be a plain state dict)."""
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


def _card_text(p: Path, fmt: str | None) -> str | None:
    if fmt == "onnx":
        onnx = require("onnx")
        proto = onnx.load(str(p), load_external_data=False)
        return {e.key: e.value for e in proto.metadata_props}.get(CARD_KEY)
    if fmt == "openvino":
        ov = require("openvino")
        model = ov.Core().read_model(str(p))
        return model.get_rt_info(["masklab", "card"]).astype(str) if model.has_rt_info(["masklab", "card"]) else None
    if fmt == "torchscript":
        with zipfile.ZipFile(p) as z:
            names = [n for n in z.namelist() if n.endswith("extra/" + TS_CARD_FILE)]
            return z.read(names[0]).decode() if names else None
    raise UsageError(f"{p} is not an exported masklab model (.onnx, .xml or TorchScript .pt)")


def read_card(path: str | os.PathLike) -> ModelCard:
    """The model card stored inside an exported file (any card version masklab has written), with
    ``export_format`` set to the file's format."""
    p = Path(path)
    fmt = detect_export_format(p)
    text = _card_text(p, fmt)
    if text is None:
        raise UsageError(f"{p} is a {fmt} file without a masklab model card; export it with `masklab export`")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"{p}: its model card is not valid JSON ({e})") from None
    return ModelCard.from_json(doc, where=str(p)).replace(export_format=fmt)
