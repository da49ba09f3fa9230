"""Training defaults that follow the data and the budget: what a setting left unset (None in
:class:`~masklab.training.config.TrainConfig`) becomes, decided once at the start of a run.

=============== ==================================================================================
setting          default
=============== ==================================================================================
``min_size``     the training set's median shorter image side, at most the model's ``min_size``
                 (never an upscale the user did not ask for: ``small`` would train 128-px images at 512)
``max_size``     the median longer side (at least ``min_size``), at most the model's ``max_size``
``batch_size``   4 when an input is at most 400x400 px (small images: a larger batch keeps a CPU busy),
                 else 2
``warmup_steps`` 5 % of the steps the run will make (at least 1, at most 100); with a time budget the
                 steps are estimated from a timed step before training starts
``augment``      on when the run passes over the training set at least :data:`AUGMENT_FROM_EPOCHS`
                 times; a short run is still underfitting, and jitter only makes its task harder.
                 From :data:`FLIP_FROM_EPOCHS` passes, horizontal flips alone (``flip``): by then the
                 model starts to learn the training images by heart (val AP flat while the loss falls),
                 and a mirrored object is as easy as the original
``amp``          fp16 autocast on a GPU; bf16 autocast on a CPU with native bf16 (avx512_bf16, AMX,
                 ARM bf16: :mod:`masklab.hardware`); else fp32. Emulated bf16 is slower than fp32
=============== ==================================================================================

On a CPU the module also trains in channels-last memory layout (same fp32 arithmetic, weights saved as
usual): oneDNN's convolutions run faster on it. ``benchmarks/train_step.py`` on the idle 2-core Zen 4
(the ``small`` model, batch 4 at 128 px): 0.468 s per step as before, 0.405 s channels-last, 0.317 s
channels-last with bf16 autocast (1.5x the steps in a time budget).

:func:`resolve_choices` returns a :class:`Choices` (the values and, per setting, why); the trainer
prints :meth:`Choices.summary` once and saves :meth:`Choices.to_json` in ``settings.json``, and a
resumed run reads them back (:meth:`Choices.from_json`) instead of deciding again.
:func:`check_warnings` says when a setting the user gave cannot work as meant.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from masklab.models.zoo import ModelSpec
from masklab.training.config import TrainConfig

__all__ = ["Choices", "choose_threads", "resolve_amp", "resolve_size", "resolve_choices", "needs_step_time",
           "measure_step_seconds", "check_warnings", "AUGMENT_FROM_EPOCHS", "FLIP_FROM_EPOCHS", "SMALL_INPUT_PX"]

#: passes over the training set from which augmentation is on by default
AUGMENT_FROM_EPOCHS = 30
#: passes over the training set from which a run without full augmentation still flips its images
FLIP_FROM_EPOCHS = 8
#: inputs up to this many pixels (400 x 400) train 4 images per step by default, larger ones 2
SMALL_INPUT_PX = 400 * 400
#: the warm-up default: this fraction of the run's steps, within [1, _WARMUP_MAX]
_WARMUP_FRACTION = 0.05
_WARMUP_MAX = 100
#: a training input this many times larger or smaller than the data's images gets a warning
_SIZE_RATIO_WARN = 2.0


@dataclass(frozen=True)
class Choices:
    """What the run's unset settings became, and why (``reasons``: setting -> one phrase).

    ``step_s``: the measured seconds of one training step (None when not measured); ``steps``: the
    optimizer steps the run will make (estimated from ``step_s`` under a time budget; None unknown)."""

    min_size: int
    max_size: int
    batch_size: int
    warmup_steps: int
    augment: bool
    steps: int | None = None
    step_s: float | None = None
    reasons: dict[str, str] = field(default_factory=dict)
    flip: bool = False  # horizontal flips without the rest of augmentation (implied by ``augment``)

    def apply(self, cfg: TrainConfig) -> TrainConfig:
        """``cfg`` with every choice filled in (what the trainer runs with)."""
        return dataclasses.replace(cfg, min_size=self.min_size, max_size=self.max_size, batch_size=self.batch_size,
                                   warmup_steps=self.warmup_steps, augment=self.augment)

    def summary(self) -> str:
        """The one block the trainer prints at the start."""
        r = self.reasons
        lines = [
            f"input {self.min_size} px shorter side, longer side at most {self.max_size} px ({r.get('size', 'given')})",
            f"batch {self.batch_size} ({r.get('batch_size', 'given')})",
            f"warm-up {self.warmup_steps} steps ({r.get('warmup_steps', 'given')})",
            f"augmentation {'on' if self.augment else 'flips only' if self.flip else 'off'} ({r.get('augment', 'given')})",
        ]
        return "masklab train: settings for this run:\n" + "\n".join(f"  {line}" for line in lines)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Choices:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in known})


def resolve_amp(amp: bool | None, device: str) -> tuple[str | None, str]:
    """``(dtype, reason)``: the autocast dtype a run on ``device`` uses (``"float16"``, ``"bfloat16"`` or
    None for fp32). ``amp`` True/False forces it on/off (on a CPU without native bf16, True still means
    fp32: it would run slower, and the reason says so); None decides from the device."""
    from masklab.hardware import cpu_features

    if device.startswith("cuda"):
        return ("float16", "GPU") if amp is not False else (None, "--no-amp")
    if amp is False:
        return None, "--no-amp"
    if cpu_features().bf16:
        return "bfloat16", "the CPU has native bf16"
    return None, ("--amp asked, but this CPU has no native bf16 (emulated bf16 is slower than fp32)"
                  if amp else "this CPU has no native bf16")


def resolve_size(cfg: TrainConfig, base: ModelSpec, stats: dict[str, Any]) -> tuple[int, int, str]:
    """``(min_size, max_size, reason)``: given values as they are, unset ones from the data's median
    image sides (``stats``: :func:`masklab.data.stats.dataset_stats`), capped at the model's."""
    short, long = stats.get("image_short_side_px"), stats.get("image_long_side_px")
    if cfg.min_size is not None and cfg.max_size is not None:
        return cfg.min_size, cfg.max_size, "given"
    if not short or not long:
        return cfg.min_size or base.min_size, cfg.max_size or base.max_size, "the model's (no image sizes in the data)"
    data_min = max(32, int(round(short)))
    min_size = cfg.min_size if cfg.min_size is not None else min(base.min_size, data_min)
    max_size = cfg.max_size if cfg.max_size is not None else max(min_size, min(base.max_size, int(round(long))))
    capped = data_min > base.min_size and cfg.min_size is None
    reason = (f"the data's median image is {int(round(short))}x{int(round(long))} px"
              + (f"; capped at the model's {base.min_size}/{base.max_size}" if capped else "; no upscale"))
    return min_size, max_size, reason


def _steps_per_epoch(images: int, world: int, batch_size: int, accumulate: int) -> int:
    return math.ceil(math.ceil(images / world) / batch_size) // accumulate or 1


def _run_steps(cfg: TrainConfig, per_epoch: int, step_s: float | None) -> tuple[int | None, str]:
    """The optimizer steps the run will make, and how that is known."""
    known = [n for n in ((cfg.epochs or 0) * per_epoch, cfg.max_steps or 0) if n]
    if known:
        return min(known), f"{min(known)} steps"
    if cfg.time_budget_s and step_s:
        # ~10 % of a budgeted run goes to evaluations and checkpoints
        n = max(1, int(0.9 * cfg.time_budget_s / step_s))
        return n, f"~{n} steps fit the {_duration(cfg.time_budget_s)} budget at {step_s:.2f} s/step"
    return None, "run length unknown"


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f}m" if seconds >= 120 else f"{seconds:.0f}s"


def resolve_choices(cfg: TrainConfig, base: ModelSpec, stats: dict[str, Any], *, images: int, world: int,
                    step_s: float | None = None) -> Choices:
    """Every unset setting of ``cfg`` decided (see the module docstring). ``images``: training images;
    ``world``: processes; ``step_s``: a measured training step in seconds (needed only when the run is
    ended by a time budget alone and the warm-up or augmentation is unset)."""
    min_size, max_size, size_reason = resolve_size(cfg, base, stats)
    reasons = {"size": size_reason}
    batch = cfg.batch_size
    if batch is None:
        batch = 4 if min_size * max_size <= SMALL_INPUT_PX else 2
        reasons["batch_size"] = f"inputs {'up to' if batch == 4 else 'over'} 400x400 px"
    per_epoch = _steps_per_epoch(images, world, batch, cfg.accumulate)
    steps, how = _run_steps(cfg, per_epoch, step_s)
    warmup = cfg.warmup_steps
    if warmup is None:
        warmup = _WARMUP_MAX if steps is None else min(_WARMUP_MAX, max(1, round(_WARMUP_FRACTION * steps)))
        reasons["warmup_steps"] = f"5% of the run: {how}" if steps is not None else f"{how}: the most, {_WARMUP_MAX}"
    augment = cfg.augment
    if augment is None:
        epochs = None if steps is None else steps / per_epoch
        augment = epochs is None or epochs >= AUGMENT_FROM_EPOCHS
        flip = not augment and epochs >= FLIP_FROM_EPOCHS
        reasons["augment"] = ("run length unknown" if epochs is None else
                              f"~{epochs:.0f} passes over the {images} training images; flips from "
                              f"{FLIP_FROM_EPOCHS}, all from {AUGMENT_FROM_EPOCHS}")
    else:
        flip = False  # --augment: everything; --no-augment: nothing
    return Choices(min_size, max_size, batch, warmup, augment, steps=steps, step_s=step_s, reasons=reasons, flip=flip)


def needs_step_time(cfg: TrainConfig) -> bool:
    """True when only a measured step can decide the defaults (a time budget alone ends the run and the
    warm-up or augmentation is unset)."""
    return bool(cfg.time_budget_s) and not cfg.epochs and not cfg.max_steps and (cfg.warmup_steps is None or cfg.augment is None)


def check_warnings(cfg: TrainConfig, choices: Choices, stats: dict[str, Any]) -> list[str]:
    """Settings that cannot work as meant: a warm-up as long as the run, a training input far from the
    data's image size. One sentence each, with what to do."""
    out = []
    if cfg.warmup_steps is not None and choices.steps is not None and cfg.warmup_steps >= choices.steps:
        out.append(f"--warmup-steps {cfg.warmup_steps} is not shorter than the run ({choices.steps} steps): the "
                   f"learning rate never reaches its peak; use fewer warm-up steps or leave it unset (5% of the run)")
    short = stats.get("image_short_side_px")
    if short and cfg.min_size is not None:  # the defaults follow the data (or are capped, and say so)
        ratio = choices.min_size / short
        if ratio >= _SIZE_RATIO_WARN or ratio <= 1 / _SIZE_RATIO_WARN:
            how = f"{ratio:.1f}x upscale" if ratio > 1 else f"{1 / ratio:.1f}x downscale"
            out.append(f"training at {choices.min_size} px (shorter side) on images whose median shorter side is "
                       f"{short:.0f} px ({how}); the model will expect that scale at inference too. "
                       f"Leave --min-size/--max-size unset to follow the data")
    return out


def choose_threads(measure, *, threads: int) -> tuple[int, float, str]:
    """``(threads, step_s, reason)``: torch's CPU threads for a training run, chosen by timing a step
    (``measure()``: seconds) with ``threads`` and with half as many, and keeping the faster (all of them
    unless half is 10 % faster). Leaves torch set to the chosen number.

    Why measure: torch's threads wait for each other at the end of every operation, so when other programs
    keep some cores busy, threads that share a core with them slow all the others. On the 2-core Zen 4
    with one core spinning, a step of the ``small`` model took 1.15 s with 2 threads (0.47 s idle); the
    timing finds that, where a count of CPUs cannot."""
    import torch

    if threads < 2:
        raise ValueError(f"choose_threads needs at least 2 threads to halve, found {threads}")
    full = measure()
    half = threads // 2
    torch.set_num_threads(half)
    try:
        fewer = measure()
    finally:
        torch.set_num_threads(threads)
    timed = f"a step took {full:.2f} s with {threads} threads, {fewer:.2f} s with {half}"
    if fewer < full / 1.1:
        torch.set_num_threads(half)
        return half, fewer, f"{timed}: other programs are using the CPU"
    return threads, full, timed


def measure_step_seconds(module, data, *, batch_size: int, device: str, sizes: tuple[int, int], repeats: int = 2,
                         autocast=None) -> float:
    """Seconds of one training step's loading + forward + backward over ``batch_size`` samples of ``data`` (a
    :class:`~masklab.training.data.TorchDataset`) at ``sizes`` = (min_size, max_size); the fastest of
    ``repeats`` after one untimed pass (allocations). Leaves no trace: gradients are cleared and the
    module's state (BatchNorm statistics) is put back. ``autocast``: a callable giving the run's
    mixed-precision context (None: fp32)."""
    import contextlib
    import copy
    import time

    import torch

    from masklab.training.data import collate

    saved = copy.deepcopy(module.state_dict())
    tf = module.transform
    old_sizes = (tf.min_size, tf.max_size)
    tf.min_size, tf.max_size = (sizes[0],), sizes[1]
    was_training = module.training
    module.train()
    best = math.inf
    try:
        for i in range(repeats + 1):
            t0 = time.perf_counter()  # loading counts: the loop decodes in this process (workers=0)
            images, targets = collate([data[(i * batch_size + j) % len(data)] for j in range(batch_size)])
            images = [im.to(device) for im in images]
            targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
            with autocast() if autocast is not None else contextlib.nullcontext():
                loss = sum(module(images, targets).values())
            loss.backward()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i:
                best = min(best, time.perf_counter() - t0)
            module.zero_grad(set_to_none=True)
    finally:
        module.load_state_dict(saved)
        tf.min_size, tf.max_size = old_sizes
        module.train(was_training)
    return best
