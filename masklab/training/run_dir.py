"""The files of a run directory besides its checkpoints: ``settings.json``, ``metrics.csv``,
``curves.png`` and the model card ``model.json`` (a :class:`~masklab.models.card.ModelCard`, which is
what makes the run directory usable as a model); and :func:`package_model`, which copies a run's best
weights and card out as a standalone model."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from masklab._version import __version__
from masklab.errors import UsageError
from masklab.io.atomic import atomic_write, atomic_write_json, atomic_write_text
from masklab.models.card import ModelCard, WeightsRef
from masklab.models.weights import load_state_dict
from masklab.models.zoo import ModelSpec
from masklab.training.checkpoint import write_safetensors
from masklab.training.config import TrainConfig, settings_path

__all__ = ["LOSS_NAMES", "write_settings", "write_metrics", "read_metrics", "plot_curves", "trained_card",
           "write_card", "card_metrics", "package_model"]

#: The losses torchvision's Mask R-CNN returns in training mode (metrics.csv has their epoch means).
LOSS_NAMES = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg", "loss_mask_iou")
_CSV_FIELDS = ("epoch", "step", "seconds", "lr", "loss", *LOSS_NAMES, "box_ap", "box_ap50", "mask_ap", "mask_ap50")


# -- settings.json ----------------------------------------------------------------------------------
def write_settings(run_dir: Path, cfg: TrainConfig, resolved: dict[str, Any], *, resume: bool) -> None:
    """``{"config": cfg, "resolved": what the defaults became}``. A resumed run keeps the ``init`` that
    only its first start knew; the config records the changed budget and the command."""
    settings = {"config": dataclasses.asdict(cfg), "resolved": dict(resolved)}
    if resume:
        old = json.loads(settings_path(run_dir).read_text(encoding="utf-8"))
        settings["resolved"]["init"] = old.get("resolved", {}).get("init", resolved.get("init"))
    atomic_write_json(settings_path(run_dir), settings, indent=2)


# -- metrics.csv and curves.png ---------------------------------------------------------------------
def write_metrics(run_dir: Path, rows: list[dict]) -> None:
    """``metrics.csv``: one row per evaluation (floats rounded to 6 digits, None as an empty cell)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=_CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else (round(r[k], 6) if isinstance(r[k], float) else r[k])) for k in _CSV_FIELDS})
    atomic_write_text(run_dir / "metrics.csv", buf.getvalue())


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """``metrics.csv`` back as dicts of floats/ints (None for empty cells)."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            rows.append({k: (None if v == "" else (int(v) if k == "step" else float(v))) for k, v in r.items()})
    return rows


def plot_curves(run_dir: Path, rows: list[dict]) -> None:
    """``curves.png``: training losses (left) and val mask/box AP (right) per epoch; skipped without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    ep = [r["epoch"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for k in ("loss", *LOSS_NAMES):
        ys = [r.get(k) for r in rows]
        if any(y is not None for y in ys):
            a.plot(ep, [np.nan if y is None else y for y in ys], marker="o", ms=3, label=k, lw=2 if k == "loss" else 1)
    a.set_xlabel("epoch"), a.set_ylabel("training loss"), a.set_yscale("log"), a.legend(fontsize=7), a.grid(alpha=0.3)
    for k in ("mask_ap", "mask_ap50", "box_ap"):
        ys = [r.get(k) for r in rows]
        if any(y is not None for y in ys):
            b.plot(ep, [np.nan if y is None else y for y in ys], marker="o", ms=3, label=k)
    b.set_xlabel("epoch"), b.set_ylabel("val AP"), b.set_ylim(0, 1), b.grid(alpha=0.3)
    if b.lines:
        b.legend(fontsize=7)
    else:
        b.text(0.5, 0.5, "no --val set", ha="center", va="center", transform=b.transAxes)
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    atomic_write(run_dir / "curves.png", lambda f: fig.savefig(f, format="png", dpi=90))
    plt.close(fig)


# -- model.json -------------------------------------------------------------------------------------
def trained_card(cfg: TrainConfig, spec: ModelSpec, weights_file: str, score: dict | None, *, step: int, epoch: int,
                 data_stats: dict | None = None, mask_iou_head: dict | None = None) -> ModelCard:
    """The run's model card: ``spec``'s classes and input size, ``weights_file`` (relative to the run
    directory), the val ``score`` of those weights (fractions; None without ``--val``), provenance and the
    training set's sizes (``data_stats``, for ``--tile auto``); ``mask_iou_head``: the MaskIoU head's sizes, if any."""
    return spec.card().replace(  # the architecture's defaults (NMS, proposals...) written out in full
        weights=WeightsRef(file=weights_file, storage="float32"),
        metrics={} if score is None else {"dataset": cfg.val, **score},
        class_names=None,
        base_model=cfg.model,
        trained={"data": cfg.data, "init": cfg.init, "epochs": epoch, "steps": step, "command": cfg.command},
        masklab_version=__version__,
        data_stats=data_stats,
        mask_iou_head=mask_iou_head,
    )


def write_card(run_dir: Path, card: ModelCard) -> None:
    atomic_write_json(run_dir / "model.json", card.to_json(), indent=2)


def _read_card(path: Path) -> ModelCard:
    return ModelCard.from_json(json.loads(path.read_text(encoding="utf-8")), where=str(path))


def card_metrics(run_dir: Path) -> dict | None:
    """The val score in the run's ``model.json`` (without ``dataset``), or None: no card or no score.
    Reads cards of every schema (runs started before masklab-model-card/2 resume too)."""
    path = run_dir / "model.json"
    if not path.is_file():
        return None
    metrics = _read_card(path).metrics
    return {k: v for k, v in metrics.items() if k != "dataset"} if metrics else None


def package_model(run_dir: str | os.PathLike, dst: str | os.PathLike, *, fp16: bool = True, command: str = "") -> Path:
    """Copy the run's best weights to ``dst`` (.safetensors; fp16 storage halves the file, loading
    restores fp32) with its model card ``dst`` with ``.json``. Returns the weights path."""
    run_dir, dst = Path(run_dir), Path(dst)
    if dst.suffix != ".safetensors":
        raise UsageError(f"the packaged model must be a .safetensors path, found {dst}")
    card_path = run_dir / "model.json"
    if not card_path.is_file():
        raise UsageError(f"{run_dir}: no model.json (not a finished masklab run directory)")
    card = _read_card(card_path)
    if card.weights is None or not card.weights.file:
        raise UsageError(f"{card_path}: the model card names no weights file")
    state = load_state_dict(run_dir / card.weights.file)  # a damaged file: WeightsMismatchError, not a traceback
    if fp16:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    write_safetensors(dst, state, {"format": "masklab-model", "arch": card.arch})
    extra = {**card.extra, "packaged_with": command} if command else card.extra
    card = card.replace(weights=WeightsRef(file=dst.name, storage="float16" if fp16 else "float32"), extra=extra)
    atomic_write_json(dst.with_suffix(".json"), card.to_json(), indent=2)
    return dst
