"""Progress lines for a run whose output is not a terminal (a log file, CI, ``nohup``): one line every
``every`` optimizer steps with the step, epoch, mean loss since the last line, learning rate, elapsed time
and the time left (the budget's rest, or the steps left at the mean step time so far)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["ProgressLines", "format_seconds"]


def format_seconds(s: float) -> str:
    """``75`` -> ``"1:15"``, ``3725`` -> ``"1:02:05"``."""
    s = max(0, int(round(s)))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


class ProgressLines:
    """``step(step, epoch, loss, lr, elapsed_s)`` after each update; prints every ``every`` steps
    (``every`` 0: never). ``total_steps`` / ``budget_s``: what ends the run (either may be None)."""

    def __init__(self, *, every: int, total_steps: int | None, budget_s: float | None, start_step: int = 0,
                 stream: TextIO | None = None) -> None:
        self.every, self.total_steps, self.budget_s = every, total_steps, budget_s
        self.stream = stream if stream is not None else sys.stderr
        self.start_step, self.t_start = start_step, time.monotonic()
        self.loss_sum, self.n = 0.0, 0

    def step(self, *, step: int, epoch: int, loss: float, lr: float, elapsed_s: float) -> str | None:
        """Record one update; returns the line when one was printed."""
        self.loss_sum += loss
        self.n += 1
        if self.every <= 0 or step % self.every:
            return None
        line = self._line(step, epoch, self.loss_sum / self.n, lr, elapsed_s)
        self.loss_sum, self.n = 0.0, 0
        print(line, file=self.stream, flush=True)
        return line

    def _eta(self, step: int, elapsed_s: float) -> float | None:
        left = []
        if self.budget_s:
            left.append(self.budget_s - elapsed_s)
        done = step - self.start_step
        if self.total_steps and done > 0:
            left.append((self.total_steps - step) * (time.monotonic() - self.t_start) / done)
        return min(left) if left else None

    def _line(self, step: int, epoch: int, loss: float, lr: float, elapsed_s: float) -> str:
        total = f"/{self.total_steps}" if self.total_steps else ""
        eta = self._eta(step, elapsed_s)
        tail = f", ETA {format_seconds(eta)}" if eta is not None else ""
        return (f"train: step {step}{total}, epoch {epoch + 1}, loss {loss:.3f}, lr {lr:.2e}, "
                f"elapsed {format_seconds(elapsed_s)}{tail}")
