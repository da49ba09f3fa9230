"""The training loop, as steps (after torchvision's ``references/detection/engine.py`` and detectron2's
``SimpleTrainer``): :meth:`Trainer.run` reads in one screen; each step is a method below it.

One :class:`Trainer` is one process's part of a run. Under torchrun every process trains on its share
of each epoch; rank 0 alone evaluates, writes the run directory and judges the time budget.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from masklab.data.dataset import open_dataset
from masklab.data.stats import dataset_stats
from masklab.errors import UsageError
from masklab.inference.threads import resolve_device
from masklab.models.mask_iou import attach_mask_iou_head, head_config
from masklab.models.weights import check_state_dict
from masklab.models.zoo import get_spec
from masklab.training.checkpoint import (
    checkpoint_paths,
    has_checkpoint,
    newest_intact,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from masklab.training.config import TrainConfig, TrainResult, freeze_mode, parse_freeze, settings_path
from masklab.training.counters import Counters, LossMeter
from masklab.training.data import TorchDataset, collate, epoch_batches
from masklab.training.ddp import (
    DistInfo,
    all_reduce_mean,
    barrier,
    broadcast_flag,
    close_distributed,
    init_distributed,
    wrap_module,
)
from masklab.training.defaults import (
    Choices,
    check_warnings,
    choose_threads,
    measure_step_seconds,
    needs_step_time,
    resolve_amp,
    resolve_choices,
    resolve_size,
)
from masklab.training.evaluate import evaluate_model
from masklab.training.fingerprint import check_data, data_fingerprint
from masklab.training.mask_iou import mask_iou_loss
from masklab.training.model import (
    apply_freeze,
    build_model,
    init_weights,
    set_eval_resize,
    set_train_resize,
    train_sizes,
    train_spec,
)
from masklab.training.progress import ProgressLines
from masklab.training.run_dir import (
    LOSS_NAMES,
    card_metrics,
    plot_curves,
    read_metrics,
    trained_card,
    write_card,
    write_metrics,
    write_settings,
)
from masklab.training.schedule import Schedule, lr_factor, resolve_lr

__all__ = ["train", "Trainer", "Counters", "LossMeter"]  # the last two re-exported


class Trainer:
    """One process's training run: built ready to :meth:`run` (weights initialised or resumed)."""

    def __init__(self, cfg: TrainConfig, info: DistInfo, *, resume: bool, progress: bool | None,
                 allow_data_change: bool = False, threads_auto: bool = False) -> None:
        self.cfg, self.info, self.resume, self.allow_data_change = cfg, info, resume, allow_data_change
        self.threads_auto = threads_auto
        self.given = cfg  # what was asked (None = follow the data / budget); self.cfg: what runs
        self.run_dir = Path(cfg.out)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        self._load_data()
        saved = _saved_choices(self.run_dir, cfg) if resume else None
        size = (saved.min_size, saved.max_size) if saved else resolve_size(cfg, get_spec(cfg.model), self.data_stats)[:2]
        self.cfg = cfg = dataclasses.replace(cfg, min_size=size[0], max_size=size[1])
        self._build_model()
        self.choices = self._choose(saved)
        self.cfg = cfg = self.choices.apply(cfg)
        self._build_optimizer()
        self.counters, self.history = Counters(), []
        if resume:
            self._restore()
        self.wrapped_mode = freeze_mode(self.stages, self.counters.epoch)  # the stage DDP was wrapped in
        apply_freeze(self.module, self.wrapped_mode)
        self.ddp_module = wrap_module(self.module, info)
        self.sizes = train_sizes(self.spec, cfg)
        self.data = TorchDataset(self.train_ds, cfg.augment, flip=self.choices.flip)
        if info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_settings(self.run_dir, self.given, {**self._resolved(), "choices": self.choices.to_json()}, resume=resume)
            self._announce()
        self.schedule = Schedule.for_run(cfg, images=len(self.train_ds), world=info.world_size,
                                         elapsed_before=self.counters.elapsed_s)
        self.bar = self._progress_bar(progress)
        self.lines = ProgressLines(every=cfg.log_every if (info.is_main and self.bar.disable) else 0,
                                   total_steps=self.schedule.total_steps, budget_s=self.schedule.budget_s,
                                   start_step=self.counters.step)
        self.meter = LossMeter()
        self.last_save = time.monotonic()
        self.eval_cost = 0.0  # seconds the last evaluation took (kept free at the end of a time budget)
        self.best_score: dict | None = None  # the val score of the best checkpoint, for the model card
        self.stopped = ""

    # -- the loop -------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Train until the epochs, steps or time budget are used up, or early stopping says so."""
        cfg, c = self.cfg, self.counters
        self.train_mode()
        while not self.stopped:
            if cfg.epochs is not None and c.epoch >= cfg.epochs:
                self.stopped = f"{cfg.epochs} epochs done"
                break
            batches = epoch_batches(len(self.data), epoch=c.epoch, seed=cfg.seed, batch_size=cfg.batch_size,
                                    rank=self.info.rank, world=self.info.world_size)
            self.train_mode()
            self.train_one_epoch(batches)
            self.end_epoch(len(batches))
            self.train_mode()
        self.bar.close()
        self.eval_mode()
        if self.info.is_main:
            print(f"masklab: training stopped ({self.stopped}) at step {c.step}, epoch {c.epoch}; "
                  f"run directory {self.run_dir}", file=sys.stderr)
        return TrainResult(self.run_dir, c.step, c.epoch, c.best_mask_ap, self.history, self.stopped)

    def train_one_epoch(self, batches: list[list[int]]) -> None:
        """The rest of this epoch's ``batches`` (all of them unless resumed mid-epoch), or until told to stop."""
        loader = torch.utils.data.DataLoader(self.data, batch_sampler=batches[self.counters.batch_in_epoch:],
                                             collate_fn=collate, num_workers=self.cfg.workers, persistent_workers=False)
        for micro, (images, targets) in enumerate(loader, start=1):
            self.counters.batch_in_epoch += 1
            sync = micro % self.cfg.accumulate == 0  # gradients of `accumulate` batches add up per update
            self.forward_backward(images, targets, sync=sync)
            if not sync:
                continue
            self.optimizer_step()
            if self.stop_requested():
                break
            if self.info.is_main and time.monotonic() - self.last_save > self.cfg.save_every_s:
                self.save(("last",))

    def end_epoch(self, n_batches: int) -> None:
        """Log the epoch (or the part done), evaluate and save on rank 0, decide whether to go on."""
        info, c = self.info, self.counters
        end_of_epoch = not self.stopped or c.batch_in_epoch >= n_batches
        means = all_reduce_mean(info, self.meter.means())
        # A run stopped mid-epoch (time budget) logs the fraction of the epoch it did, e.g. 5.53.
        done = c.epoch + (1 if end_of_epoch else round(c.batch_in_epoch / max(n_batches, 1), 3))
        row: dict[str, Any] = {"epoch": done, "step": c.step, "seconds": round(self.schedule.elapsed(), 1),
                               "lr": self.optimizer.param_groups[0]["lr"], **dict(zip(("loss", *LOSS_NAMES), means))}
        if end_of_epoch:
            c.epoch, c.batch_in_epoch = c.epoch + 1, 0
        if info.is_main:
            self.record(row, improved=self.validate(row))
            # Rank 0 decides (it alone evaluates and knows the evaluation's cost); every rank follows.
            if not self.stopped and self.schedule.out_of_time(self.eval_cost):
                self.stopped = "time budget used"
        if broadcast_flag(info, bool(self.stopped)) and not self.stopped:
            self.stopped = "stopped by rank 0"
        barrier(info)
        self.meter = LossMeter()

    # -- steps ----------------------------------------------------------------------------------------
    def forward_backward(self, images, targets, *, sync: bool) -> None:
        """One batch: losses, backward (scaled for AMP and accumulation); DDP syncs gradients only when ``sync``."""
        device = self.info.device
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
        no_sync = self.ddp_module.no_sync() if (self.info.distributed and not sync) else contextlib.nullcontext()
        with no_sync, self.autocast():
            losses = self.ddp_module(images, targets)
            loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"the loss became {loss.item()} at step {self.counters.step} "
                f"({ {k: round(v.item(), 4) for k, v in losses.items()} }); lower --lr or check the dataset with masklab validate"
            )
        self.scaler.scale(loss / self.cfg.accumulate).backward()
        self.meter.add(losses, loss)

    def autocast(self):
        """The mixed-precision context of a forward pass (:func:`~masklab.training.defaults.resolve_amp`)."""
        kind = "cuda" if self.info.device.startswith("cuda") else "cpu"
        dtype = getattr(torch, self.amp_dtype or "float32")
        return torch.autocast(kind, dtype=dtype, enabled=self.amp_dtype is not None)

    def optimizer_step(self) -> None:
        """Set the scheduled LR, clip the gradient norm at 10, update, count the step."""
        c = self.counters
        factor = lr_factor(c.step, self.schedule.fraction(c.step), self.cfg.warmup_steps)
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr * factor
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_([p for p in self.params if p.grad is not None], 10.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        c.step += 1
        if self.schedule.timed:
            self.bar.n = int(min(self.schedule.elapsed(), self.schedule.budget_s))
            self.bar.refresh()
        else:
            self.bar.update(1)
        loss = self.meter.sums["loss"] / self.meter.count
        self.bar.set_postfix(epoch=c.epoch, loss=f"{loss:.3f}", lr=f"{self.lr * factor:.2g}", refresh=False)
        self.lines.step(step=c.step, epoch=c.epoch, loss=self.meter.last, lr=self.lr * factor, elapsed_s=self.schedule.elapsed())

    def stop_requested(self) -> bool:
        """After an update: out of time (one evaluation's cost kept free) or of steps, as rank 0 says."""
        out_of_time = self.schedule.out_of_time(self.eval_cost * 1.1)
        steps_done = self.cfg.max_steps is not None and self.counters.step >= self.cfg.max_steps
        if not broadcast_flag(self.info, out_of_time or steps_done):
            return False
        self.stopped = "time budget used" if out_of_time else f"{self.cfg.max_steps} steps done"
        return True

    def validate(self, row: dict[str, Any]) -> bool:
        """Evaluate on ``--val`` (rank 0), add the score to ``row``; True when it is the best so far
        (always True without a validation set: the last checkpoint is then the best)."""
        c = self.counters
        if self.val_ds is None:
            self.bar.write(f"epoch {row['epoch']}: loss {row['loss']:.3f}")
            return True
        t_eval = time.monotonic()
        self.eval_mode()
        score = evaluate_model(self.module, self.val_ds, device=self.info.device, class_names=self.class_names)
        self.eval_cost = time.monotonic() - t_eval
        row.update(score)
        ap = score.get("mask_ap") or 0.0
        improved = c.best_mask_ap is None or ap > c.best_mask_ap
        if improved:
            c.best_mask_ap, self.best_score, c.evals_since_best = ap, score, 0
        else:
            c.evals_since_best += 1
        self.bar.write(f"epoch {row['epoch']}: loss {row['loss']:.3f}, val mask AP {ap:.3f} "
                       f"(AP50 {score.get('mask_ap50') or 0:.3f}), box AP {score.get('box_ap') or 0:.3f}")
        return improved

    def record(self, row: dict[str, Any], *, improved: bool) -> None:
        """Rank 0: checkpoint (``best`` too when ``improved``), model card, metrics.csv, curves, early stop."""
        self.history.append(row)
        self.save(("last", "best") if improved else ("last",))
        if self.best_score is None and self.resume:
            self.best_score = card_metrics(self.run_dir)
        best = checkpoint_paths(self.run_dir, "best") or checkpoint_paths(self.run_dir, "last")
        card = trained_card(self.cfg, self.spec, str(best.weights.relative_to(self.run_dir)), self.best_score,
                            step=self.counters.step, epoch=self.counters.epoch, data_stats=self.data_stats,
                            mask_iou_head=head_config(self.module))
        write_card(self.run_dir, card)
        write_metrics(self.run_dir, self.history)
        plot_curves(self.run_dir, self.history)
        patience = self.cfg.patience
        if patience is not None and self.val_ds is not None and self.counters.evals_since_best >= patience:
            self.stopped = self.stopped or f"early stop: val mask AP did not improve for {patience} evaluations"

    def save(self, which: tuple[str, ...]) -> None:
        """Checkpoint the model and everything :meth:`_restore` needs; point ``which`` at it."""
        c, s = self.counters, self.schedule
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {"base_lr": self.lr, "warmup_steps": self.cfg.warmup_steps, "total_steps": s.total_steps or 0,
                          "budget_s": s.budget_s or 0.0},
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "rng": rng_state(),
            "epoch": c.epoch,
            "batch_in_epoch": c.batch_in_epoch,
            "elapsed_s": s.elapsed(),
            "best_mask_ap": c.best_mask_ap,
            "evals_since_best": c.evals_since_best,
            "class_names": list(self.class_names),
        }
        save_checkpoint(self.run_dir, model_state=self.module.state_dict(), state=state, step=c.step, which=which)
        self.last_save = time.monotonic()

    # -- modes ----------------------------------------------------------------------------------------
    def train_mode(self) -> None:
        """Training resize and BatchNorm updates, with this epoch's freeze stage."""
        mode = freeze_mode(self.stages, self.counters.epoch)
        if self.info.distributed and mode != self.wrapped_mode:
            self.ddp_module = wrap_module(self.module, self.info)  # DDP hooks only the parameters that train
            self.wrapped_mode = mode
        set_train_resize(self.module, self.spec, self.cfg, self.sizes)
        self.module.train()
        apply_freeze(self.module, mode)

    def eval_mode(self) -> None:
        set_eval_resize(self.module, self.spec)
        self.module.eval()

    # -- set-up ---------------------------------------------------------------------------------------
    def _load_data(self) -> None:
        cfg = self.cfg
        self.train_ds = open_dataset(cfg.data)
        self.data_stats = dataset_stats(self.train_ds.gt)  # recorded in the card: --tile auto reads it
        val_kw = {"split": "val"} if str(cfg.val).endswith((".yaml", ".yml")) else {}
        self.val_ds = open_dataset(cfg.val, **val_kw) if cfg.val else None
        self.class_names = self.train_ds.class_names
        self.fingerprints = {"data": data_fingerprint(self.train_ds), "val": self.val_ds and data_fingerprint(self.val_ds)}
        self.data_changes: list[dict] = []  # --allow-data-change resumes: the step and what changed

    def _build_model(self) -> None:
        cfg, device = self.cfg, self.info.device
        self.spec = train_spec(cfg, self.class_names)
        self.module = build_model(self.spec)
        self.init_note = "resumed" if self.resume else init_weights(self.module, cfg, self.spec)
        if cfg.mask_iou_head:  # after --init (COCO weights have no such head), before --resume loads its weights
            attach_mask_iou_head(self.module, loss=mask_iou_loss)  # adds loss_mask_iou to the model's losses
        self.module.to(device)
        if not device.startswith("cuda"):
            # oneDNN's convolutions are faster on NHWC (1.2x per step on the small model); same arithmetic
            self.module.to(memory_format=torch.channels_last)
        self.amp_dtype, self.amp_reason = resolve_amp(cfg.amp, device)
        if cfg.amp and self.amp_dtype is None and self.info.is_main:
            print(f"masklab train: {self.amp_reason}; training in fp32", file=sys.stderr)

    def _build_optimizer(self) -> None:
        self.params = list(self.module.parameters())
        self.lr = resolve_lr(self.cfg, self.info.world_size, self.spec)
        self.optimizer = torch.optim.AdamW(self.params, lr=self.lr, weight_decay=self.cfg.weight_decay)
        # bf16 has fp32's exponent range: only fp16 needs loss scaling
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == "float16")
        self.stages = parse_freeze(self.cfg.freeze)

    def _measure(self, choices: Choices) -> float:
        """Seconds of one training step with ``choices``' batch and input size (the fastest of two)."""
        return measure_step_seconds(self.module, TorchDataset(self.train_ds, False), batch_size=choices.batch_size,
                                    device=self.info.device, sizes=(choices.min_size, choices.max_size),
                                    autocast=self.autocast)

    def _pick_threads(self, choices: Choices) -> float | None:
        """``threads="auto"`` on a CPU: time a step with all threads and with half (:func:`choose_threads`),
        keep the faster; returns that step's seconds (None when nothing was timed)."""
        self.threads_note = f"{torch.get_num_threads()} (as set)"
        if not self.threads_auto or self.info.device != "cpu" or self.info.distributed or torch.get_num_threads() < 2:
            return None  # nothing to choose (one thread has no half): no step is timed for it
        n, step_s, reason = choose_threads(lambda: self._measure(choices), threads=torch.get_num_threads())
        self.threads_note = f"{n} ({reason})"
        return step_s

    def _choose(self, saved: Choices | None) -> Choices:
        """The unset settings decided (:mod:`masklab.training.defaults`; ``saved``: a resumed run's, kept);
        a step is timed first when only the time budget tells how long the run is, or to pick the threads."""
        cfg, stats, n = self.given, self.data_stats, len(self.train_ds)  # None = decide here
        first = saved or resolve_choices(cfg, get_spec(cfg.model), stats, images=n, world=self.info.world_size)
        step_s = self._pick_threads(first)
        if saved or not needs_step_time(cfg):
            return first
        step_s = step_s or self._measure(first)
        step_s *= 1.1  # the optimizer update and the loop's own work, not in the timed pass
        return resolve_choices(cfg, get_spec(cfg.model), stats, images=n, world=self.info.world_size, step_s=step_s)

    def _announce(self) -> None:
        """Rank 0, once: the settings the run decided, and warnings about given ones."""
        precision = f"{self.amp_dtype} autocast" if self.amp_dtype else "fp32"
        print(f"{self.choices.summary()}\n  precision {precision} ({self.amp_reason})\n  threads {self.threads_note}",
              file=sys.stderr)
        if not self.resume:
            for w in check_warnings(self.given, self.choices, self.data_stats):
                print(f"masklab train: warning: {w}", file=sys.stderr)

    def _restore(self) -> None:
        """Continue from the newest checkpoint that verifies (normally ``last``): weights, optimizer, AMP
        scaler, counters, RNG, metrics; refuse a changed dataset unless ``allow_data_change``."""
        # before hashing checkpoints: a refusal costs nothing
        self.data_changes, changes = check_data(self.run_dir, self.cfg, self.fingerprints, allow=self.allow_data_change)
        found = newest_intact(self.run_dir)
        model_state, state = found.model_state, found.state
        if found.skipped and self.info.is_main:
            print("masklab: " + "\nmasklab: ".join(found.skipped) + f"\nmasklab: resuming from step {found.paths.step} "
                  f"({found.paths.weights.name}), the newest checkpoint that verifies", file=sys.stderr)
        if list(state.get("class_names", [])) != list(self.class_names):
            raise UsageError(
                f"--resume {self.run_dir}: the checkpoint was trained on classes {state.get('class_names')}, "
                f"the dataset {self.cfg.data} has {list(self.class_names)}"
            )
        check_state_dict(self.module, model_state, source=f"checkpoint in {self.run_dir}")
        self.module.load_state_dict(model_state)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler.is_enabled() and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.counters = Counters.from_state(state)
        set_rng_state(state["rng"])
        # Rows logged after the checkpoint (when an older one was the newest intact) are done again.
        self.history = [r for r in read_metrics(self.run_dir) if r["step"] <= self.counters.step]
        self.data_changes += [{"step": self.counters.step, **ch} for ch in changes]

    def _resolved(self) -> dict[str, Any]:
        """What the defaults became (``settings.json``'s ``resolved``)."""
        cfg, info, spec = self.cfg, self.info, self.spec
        return {
            "device": info.device, "world_size": info.world_size, "backend": info.dist_backend,
            "amp": self.amp_dtype or False, "amp_reason": self.amp_reason,
            "memory_format": "cuda default" if info.device.startswith("cuda") else "channels_last",
            "threads": self.threads_note,
            "lr": self.lr, "effective_batch": cfg.batch_size * cfg.accumulate * info.world_size,
            "class_names": list(self.class_names), "train_images": len(self.train_ds),
            "val_images": len(self.val_ds) if self.val_ds else 0,
            "train_format": self.train_ds.format, "val_format": self.val_ds.format if self.val_ds else None,
            "min_size": spec.min_size, "max_size": spec.max_size, "train_sizes": self.sizes, "init": self.init_note,
            "torch": torch.__version__, "data_fingerprint": self.fingerprints["data"],
            "val_fingerprint": self.fingerprints["val"], "data_changes": self.data_changes,
        }

    def _progress_bar(self, progress: bool | None) -> tqdm:
        s = self.schedule
        show = progress if progress is not None else sys.stderr.isatty()
        return tqdm(total=s.budget_s if s.timed else s.total_steps,
                    initial=int(min(s.elapsed(), s.budget_s)) if s.timed else self.counters.step,
                    desc="train", unit="s" if s.timed else "step", disable=not (show and self.info.is_main),
                    dynamic_ncols=True)


def _saved_choices(run_dir: Path, cfg: TrainConfig) -> Choices | None:
    """The choices a resumed run made at its first start (None for a run written before they were saved:
    its config then holds every value, and the input size is its ``resolved`` one)."""
    try:
        resolved = json.loads(settings_path(run_dir).read_text(encoding="utf-8")).get("resolved", {})
    except (OSError, ValueError):
        return None
    if "choices" in resolved:
        return Choices.from_json(resolved["choices"])
    if "min_size" in resolved:
        # its config holds the values it ran with (these were the defaults then)
        return Choices(resolved["min_size"], resolved["max_size"], cfg.batch_size or 2,
                       100 if cfg.warmup_steps is None else cfg.warmup_steps, cfg.augment is not False, reasons={})
    return None


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool | None = None, threads: int | str | None = None,
          allow_data_change: bool = False) -> TrainResult:
    """Run training as ``cfg`` says (``resume``: continue ``cfg.out`` from its newest intact checkpoint).

    Rank 0 evaluates and writes the run directory; under torchrun every process trains on its share.
    ``progress``: show a progress bar (None: when stderr is a terminal). ``threads``: torch CPU threads
    for the run, restored afterwards (None: leave torch's setting as the entry point made it; ``"auto"``:
    on a CPU, the faster of torch's setting and half of it, timed at the start: see
    :func:`~masklab.training.defaults.choose_threads`).
    ``allow_data_change``: resume although the data's fingerprint differs from the one the run recorded.
    ``cfg.data`` / ``cfg.val`` are made absolute (settings.json then names the same data from anywhere).
    """
    cfg.check()
    cfg = dataclasses.replace(cfg, data=os.path.abspath(cfg.data), val=cfg.val and os.path.abspath(cfg.val))
    run_dir = Path(cfg.out)
    has_run = has_checkpoint(run_dir)
    if resume and not has_run:
        raise UsageError(f"--resume {run_dir}: no checkpoint to continue from (checkpoints/last.json is missing)")
    if not resume and has_run:
        raise UsageError(f"{run_dir} already holds a run: continue it with --resume {run_dir}, or choose another --out")
    info = init_distributed(resolve_device(cfg.device))
    threads_before = torch.get_num_threads()
    try:
        if threads not in (None, "auto"):
            torch.set_num_threads(int(threads))
        return Trainer(cfg, info, resume=resume, progress=progress, allow_data_change=allow_data_change,
                       threads_auto=threads == "auto").run()
    finally:
        torch.set_num_threads(threads_before)
        close_distributed(info)
