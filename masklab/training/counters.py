"""Where a training run is (:class:`Counters`, saved in every checkpoint) and the loss sums between
evaluations (:class:`LossMeter`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from masklab.training.run_dir import LOSS_NAMES

__all__ = ["Counters", "LossMeter"]


@dataclass
class Counters:
    """Where the run is; saved in every checkpoint and restored on ``--resume``. ``step``: optimizer
    updates done; ``epoch``: epochs finished; ``batch_in_epoch``: batches of the current epoch done;
    ``elapsed_s``: training seconds before this start; ``best_mask_ap`` / ``evals_since_best``: early stopping."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    elapsed_s: float = 0.0
    best_mask_ap: float | None = None
    evals_since_best: int = 0

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Counters:
        return cls(int(state["step"]), int(state["epoch"]), int(state["batch_in_epoch"]), float(state["elapsed_s"]),
                   state.get("best_mask_ap"), int(state.get("evals_since_best", 0)))


class LossMeter:
    """Sums of the losses since the last evaluation (floats; ``loss`` is their total)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0
        self.last = 0.0  # the latest batch's total loss

    def add(self, losses: dict[str, torch.Tensor], loss: torch.Tensor) -> None:
        for k, v in losses.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v.detach())
        self.last = float(loss.detach())
        self.sums["loss"] = self.sums.get("loss", 0.0) + self.last
        self.count += 1

    def means(self) -> list[float]:
        """Mean ``loss`` then each of :data:`LOSS_NAMES` (0.0 for a loss never seen)."""
        return [self.sums.get(k, 0.0) / max(self.count, 1) for k in ("loss", *LOSS_NAMES)]
