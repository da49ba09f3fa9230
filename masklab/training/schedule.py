"""How long a run lasts and how fast it learns: the peak learning rate, warm-up + cosine decay, and the
clock that measures progress through an epoch count, a step limit or a time budget."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from masklab.models.zoo import ModelSpec
from masklab.training.config import TrainConfig

__all__ = ["resolve_lr", "lr_factor", "Schedule"]


def resolve_lr(cfg: TrainConfig, world: int, spec: ModelSpec) -> float:
    """``cfg.lr`` when given; else the model's ``train_lr`` (2e-4 from COCO weights), scaled linearly
    by the effective batch over 8 (never below 1x)."""
    if cfg.lr is not None:
        return cfg.lr
    base = 2e-4 if cfg.init == "coco" else spec.train_lr
    return base * max(1.0, cfg.batch_size * cfg.accumulate * world / 8)


def lr_factor(step: int, progress: float, warmup: int) -> float:
    """Multiplier of the peak LR at optimizer ``step`` (0-based): linear warm-up over ``warmup`` steps,
    times a cosine from 1 to 0 over ``progress`` in [0, 1] (clipped)."""
    warm = min(1.0, (step + 1) / max(1, warmup))
    return warm * 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))


@dataclass
class Schedule:
    """Where a run stands. ``total_steps``: optimizer updates the run will make (None: only a time
    budget ends it); ``budget_s``: the wall-clock budget in seconds (None: none); ``t0``: the
    ``time.monotonic()`` the run's clock started at (earlier starts of a resumed run included)."""

    total_steps: int | None
    budget_s: float | None
    t0: float

    @classmethod
    def for_run(cls, cfg: TrainConfig, *, images: int, world: int, elapsed_before: float) -> Schedule:
        steps_per_epoch = math.ceil(math.ceil(images / world) / cfg.batch_size) // cfg.accumulate or 1
        total = None if cfg.epochs is None else cfg.epochs * steps_per_epoch
        if cfg.max_steps is not None:
            total = min(total or cfg.max_steps, cfg.max_steps)
        return cls(total, cfg.time_budget_s, time.monotonic() - elapsed_before)

    @property
    def timed(self) -> bool:
        """True when only the time budget measures progress (no step count)."""
        return bool(self.budget_s) and not self.total_steps

    def elapsed(self) -> float:
        """Seconds of training so far, resumed starts included."""
        return time.monotonic() - self.t0

    def fraction(self, step: int) -> float:
        """Progress in [0, 1+]: the larger of steps done and budget used."""
        fr = []
        if self.total_steps:
            fr.append(step / self.total_steps)
        if self.budget_s:
            fr.append(self.elapsed() / self.budget_s)
        return max(fr) if fr else 0.0

    def out_of_time(self, reserve_s: float) -> bool:
        """True when fewer than ``reserve_s`` seconds of the budget are left (False without a budget)."""
        return bool(self.budget_s) and self.elapsed() + reserve_s >= self.budget_s
