"""What a training run is asked to do: :class:`TrainConfig` (saved as ``settings.json``), its parsers,
and :class:`TrainResult`. Nothing here imports torch."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from masklab.errors import UsageError
from masklab.settings import DEFAULT_MODEL

__all__ = ["TrainConfig", "TrainResult", "parse_duration", "parse_freeze", "freeze_mode", "load_settings",
           "settings_path", "INITS", "FREEZES"]

INITS = ("coco", "backbone", "scratch")
FREEZES = ("none", "backbone", "heads")


@dataclass
class TrainConfig:
    """Everything a run needs; saved as ``settings.json`` (``None`` = the default described here; the
    ones that follow the data and the budget are decided by :mod:`masklab.training.defaults`).

    Attributes:
        data, val: dataset paths (any format :func:`masklab.data.dataset.open_dataset` reads); ``val``
            optional (no evaluation, ``best`` = ``last``).
        out: the run directory.
        model: a model name; ``init`` ``coco`` (published COCO weights, class-specific heads replaced),
            ``backbone`` (ImageNet trunk) or ``scratch``.
        freeze: ``none``, ``backbone`` (trunk frozen: train FPN, RPN and heads, the tutorials'
            ``layers="heads"``), ``heads`` (only the class-specific predictors train), or a schedule
            ``"backbone:2,none"`` (2 epochs with the trunk frozen, then everything).
        epochs / time_budget_s: stop after this many epochs / seconds of wall clock (one is required).
        batch_size: images per step per process (None: 4 for inputs up to 400x400 px, else 2);
            accumulate: steps whose gradients add up per update.
        lr: peak learning rate (AdamW), default the model's ``train_lr`` (1e-3; 2e-3 for ``small``, whose
            heads have BatchNorm) from scratch/backbone and 2e-4 from COCO, scaled by
            the effective batch over 8; warmup_steps: linear warm-up (None: 5% of the run's steps, measured
            or estimated, at most 100); then cosine decay to 0 over the run (over the time budget when
            there is one).
        min_size, max_size: training resize (shorter side, longer-side cap) in pixels; None: the training
            set's median image sides, capped at the model's (no upscale).
        scale_jitter: relative range of the shorter side during training (0.2: 0.8x-1.2x).
        augment: horizontal flips, scale and colour jitter (boxes and masks follow the image); None: on
            when the run passes over the data at least 30 times.
        patience: stop when val mask AP has not improved for this many evaluations (None: never).
        device: ``auto``/``cpu``/``cuda``; amp: mixed precision: fp16 autocast on a GPU, bf16 on a CPU with native
            bf16 (None: on where it runs natively; False: fp32; True on a CPU without native bf16: fp32, said).
        workers: DataLoader worker processes; seed: seeds sampling and augmentation.
        save_every_s: also save ``last`` mid-epoch this often (seconds).
        max_steps: stop after this many optimizer updates (tests; None: no limit).
        log_every: when no progress bar is shown (output not a terminal), a progress line every this many
            steps (0: none).
        mask_iou_head: also train a MaskIoU head (Mask Scoring R-CNN, :mod:`masklab.models.mask_iou`),
            whose predicted mask IoU becomes each detection's ``quality``.
        command: the command line that started (and resumed) the run, recorded in the model card.
    """

    data: str
    out: str
    val: str | None = None
    model: str = DEFAULT_MODEL
    init: str = "coco"
    freeze: str = "none"
    epochs: int | None = None
    time_budget_s: float | None = None
    batch_size: int | None = None
    accumulate: int = 1
    lr: float | None = None
    weight_decay: float = 1e-4
    warmup_steps: int | None = None
    min_size: int | None = None
    max_size: int | None = None
    scale_jitter: float = 0.2
    augment: bool | None = None
    patience: int | None = 10
    device: str = "auto"
    amp: bool | None = None
    workers: int = 0
    seed: int = 0
    save_every_s: float = 600.0
    max_steps: int | None = None
    log_every: int = 50
    mask_iou_head: bool = False
    command: str = ""

    def check(self) -> None:
        """Raise UsageError for a value no run can use (loads nothing)."""
        if self.init not in INITS:
            raise UsageError(f"--init must be one of {', '.join(INITS)}, found {self.init!r}")
        parse_freeze(self.freeze)
        if self.epochs is None and self.time_budget_s is None and self.max_steps is None:
            raise UsageError("give --epochs N or --time-budget DURATION (e.g. 20m)")
        if self.log_every < 0:
            raise UsageError(f"--log-every must be >= 0, found {self.log_every}")
        for name in ("epochs", "batch_size", "accumulate"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, found {v}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise UsageError(f"--time-budget must be positive, found {self.time_budget_s} s")
        if not 0 <= self.scale_jitter < 1:
            raise UsageError(f"--scale-jitter must be in [0, 1), found {self.scale_jitter}")


@dataclass
class TrainResult:
    """``run_dir``; ``step``/``epoch`` reached; ``best_mask_ap`` (None without val); ``history``: the
    metrics.csv rows; ``stopped``: why training ended."""

    run_dir: Path
    step: int
    epoch: int
    best_mask_ap: float | None
    history: list[dict] = field(default_factory=list)
    stopped: str = ""


def parse_duration(text: str | float | int) -> float:
    """``"20m"``, ``"1h30m"``, ``"90s"``, ``"1200"`` (seconds) -> seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    s = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", s)
    if not parts or "".join(f"{a}{b}" for a, b in parts) != s.replace(" ", ""):
        raise UsageError(f"a duration is like 20m, 1h30m, 90s or 1200 (seconds); found {text!r}")
    return sum(float(a) * {"h": 3600, "m": 60, "s": 1}[b] for a, b in parts)


def parse_freeze(text: str) -> list[tuple[str, int | None]]:
    """``"backbone:2,none"`` -> ``[("backbone", 2), ("none", None)]`` (the last stage lasts the rest)."""
    stages = []
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise UsageError("--freeze is empty")
    for i, item in enumerate(items):
        mode, _, n = item.partition(":")
        if mode not in FREEZES:
            raise UsageError(f"--freeze stage {item!r}: expected one of {', '.join(FREEZES)} (optionally :EPOCHS)")
        if n:
            if not n.isdigit() or int(n) <= 0:
                raise UsageError(f"--freeze stage {item!r}: the epoch count must be a positive integer")
            stages.append((mode, int(n)))
        elif i != len(items) - 1:
            raise UsageError(f"--freeze stage {item!r}: every stage but the last needs :EPOCHS")
        else:
            stages.append((mode, None))
    return stages


def freeze_mode(stages: list[tuple[str, int | None]], epoch: int) -> str:
    """The freeze mode of (0-based) ``epoch`` under the :func:`parse_freeze` schedule ``stages``."""
    start = 0
    for mode, n in stages:
        if n is None or epoch < start + n:
            return mode
        start += n
    return stages[-1][0]


def settings_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "settings.json"


def load_settings(run_dir: str | os.PathLike) -> TrainConfig:
    """The :class:`TrainConfig` a run was started with (its ``settings.json``)."""
    path = settings_path(run_dir)
    if not Path(run_dir).is_dir():
        raise UsageError(f"--resume {run_dir}: no such run directory")
    if not path.is_file():
        raise UsageError(f"--resume {run_dir}: no settings.json there (not a masklab run directory)")
    doc = json.loads(path.read_text(encoding="utf-8"))
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in doc["config"].items() if k in known})
