"""Train (fine-tune) Mask R-CNN on your own dataset; the run directory it writes is itself a model.

    >>> from masklab.engine.train import TrainConfig, train                       # doctest: +SKIP
    >>> result = train(TrainConfig(data="shapes/train", val="shapes/val", out="runs/shapes",
    ...                            model="small", init="scratch", time_budget_s=1200))
    >>> Segmenter("runs/shapes")("scene.png")                                    # a run dir is a model

``RUN_DIR`` layout::

    settings.json        the resolved settings (what --resume continues with)
    metrics.csv          one row per epoch: losses, learning rate, val box/mask AP
    curves.png           losses and mask AP per epoch
    model.json           the model card: architecture, classes, preprocessing, val score, weights file
    checkpoints/         last.json and best.json point at step-N.safetensors + step-N.state.pt pairs

Multi-GPU / multi-node: launch the same command under ``torchrun``; see :mod:`masklab.engine.ddp`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from masklab.data.dataset import Sample, SegmentationDataset, open_dataset
from masklab.engine.checkpoint import checkpoint_paths, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from masklab.engine.ddp import DistInfo, all_reduce_mean, barrier, broadcast_flag, close_distributed, init_distributed
from masklab.errors import UsageError, WeightsMismatchError
from masklab.io.atomic import atomic_write_json, atomic_write_text
from masklab.models.zoo import DEFAULT_MODEL, ModelSpec, get_spec

__all__ = ["TrainConfig", "TrainResult", "train", "parse_duration", "parse_freeze", "package_model", "CARD_FORMAT"]

CARD_FORMAT = "masklab-model-card/1"
INITS = ("coco", "backbone", "scratch")
FREEZES = ("none", "backbone", "heads")
LOSS_NAMES = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")


@dataclass
class TrainConfig:
    """Everything a run needs; saved as ``settings.json`` (``None`` = the default described here).

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
        batch_size: images per step per process; accumulate: steps whose gradients add up per update.
        lr: peak learning rate (AdamW), default the model's ``train_lr`` (1e-3; 2e-3 for ``small``, whose
            heads have BatchNorm) from scratch/backbone and 2e-4 from COCO, scaled by
            the effective batch over 8; warmup_steps: linear warm-up; then cosine decay to 0 over the run
            (over the time budget when there is one).
        min_size, max_size: training resize (shorter side, longer-side cap) in pixels; default the model's.
        scale_jitter: relative range of the shorter side during training (0.2: 0.8x-1.2x).
        augment: horizontal flips, scale and colour jitter (boxes and masks follow the image).
        patience: stop when val mask AP has not improved for this many evaluations (None: never).
        device: ``auto``/``cpu``/``cuda``; amp: mixed precision (GPU only; None: on with a GPU).
        workers: DataLoader worker processes; seed: seeds sampling and augmentation.
        save_every_s: also save ``last`` mid-epoch this often (seconds).
        max_steps: stop after this many optimizer updates (tests; None: no limit).
    """

    data: str
    out: str
    val: str | None = None
    model: str = DEFAULT_MODEL
    init: str = "coco"
    freeze: str = "none"
    epochs: int | None = None
    time_budget_s: float | None = None
    batch_size: int = 2
    accumulate: int = 1
    lr: float | None = None
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    min_size: int | None = None
    max_size: int | None = None
    scale_jitter: float = 0.2
    augment: bool = True
    patience: int | None = 10
    device: str = "auto"
    amp: bool | None = None
    workers: int = 0
    seed: int = 0
    save_every_s: float = 600.0
    max_steps: int | None = None
    command: str = ""

    def check(self) -> None:
        if self.init not in INITS:
            raise UsageError(f"--init must be one of {', '.join(INITS)}, found {self.init!r}")
        parse_freeze(self.freeze)
        if self.epochs is None and self.time_budget_s is None and self.max_steps is None:
            raise UsageError("give --epochs N or --time-budget DURATION (e.g. 20m)")
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


# -- small parsers ----------------------------------------------------------------------------------
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


def _freeze_mode(stages: list[tuple[str, int | None]], epoch: int) -> str:
    start = 0
    for mode, n in stages:
        if n is None or epoch < start + n:
            return mode
        start += n
    return stages[-1][0]


def _apply_freeze(module, mode: str) -> None:
    """``none``: all train; ``backbone``: the trunk (``backbone.body``) is frozen; ``heads``: only the
    class-specific box and mask predictors train. Frozen BatchNorm layers also stop updating statistics."""
    from torch import nn

    for p in module.parameters():
        p.requires_grad_(mode == "none")
    if mode == "backbone":
        for name, p in module.named_parameters():
            p.requires_grad_(not name.startswith("backbone.body."))
    elif mode == "heads":
        for sub in (module.roi_heads.box_predictor, module.roi_heads.mask_predictor):
            for p in sub.parameters():
                p.requires_grad_(True)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            frozen = not any(p.requires_grad for p in m.parameters(recurse=False))
            m.eval() if frozen else m.train()


# -- model building ---------------------------------------------------------------------------------
def _spec_for(cfg: TrainConfig, class_names: Sequence[str]) -> ModelSpec:
    base = get_spec(cfg.model)
    return dataclasses.replace(
        base,
        name=Path(cfg.out).name or "custom",
        categories=("__background__",) + tuple(class_names),
        weights=None,
        min_size=cfg.min_size or base.min_size,
        max_size=cfg.max_size or base.max_size,
        published={},
        tags=("custom",),
        mrcnn_class_names=None,
        description=f"{base.description.split('.')[0]}, trained with masklab train on {cfg.data}",
    )


def _build(spec: ModelSpec):
    from masklab.models.loading import ModelOptions, build_module
    from masklab.models.roi_pool import use_fast_roi_pooling

    # A low score threshold while training: validation AP needs the low-confidence detections too.
    module = build_module(spec, ModelOptions(score_thresh=0.05))
    # RoIAlign's CPU backward in torchvision is single-threaded; this one gives the same gradients
    # from two matrix products (same forward, no parameters: checkpoints are unchanged).
    use_fast_roi_pooling(module)
    return module


#: ImageNet trunk weights for ``--init backbone`` (torchvision's published files; sha256 prefixes as in
#: their file names). Downloaded through the same cache / sha256 / offline rules as the model weights.
_BACKBONES = {
    "torchvision_maskrcnn_v1": ("https://download.pytorch.org/models/resnet50-0676ba61.pth", "0676ba61", "resnet50-0676ba61.pth"),
    "torchvision_maskrcnn_v2": ("https://download.pytorch.org/models/resnet50-0676ba61.pth", "0676ba61", "resnet50-0676ba61.pth"),
    "maskrcnn_mobilenet_v3_fpn": (
        "https://download.pytorch.org/models/mobilenet_v3_large-8738ca79.pth", "8738ca79", "mobilenet_v3_large-8738ca79.pth",
    ),
}


def backbone_state_for(module, arch: str, state: dict) -> dict:
    """Map an ImageNet classifier's state dict onto ``module.backbone.body`` (keys the trunk lacks, e.g.
    the classifier, are dropped). Raises WeightsMismatchError when nothing fits."""
    body = module.backbone.body.state_dict()
    out = {}
    for k, v in state.items():
        key = k[len("features."):] if arch == "maskrcnn_mobilenet_v3_fpn" and k.startswith("features.") else k
        if key in body and tuple(body[key].shape) == tuple(v.shape):
            out[key] = v
    if len(out) < len([k for k in body if not k.endswith("num_batches_tracked")]) // 2:
        raise WeightsMismatchError(f"the ImageNet weights fit only {len(out)} of {len(body)} trunk tensors of {arch}")
    return out


def _init_weights(module, cfg: TrainConfig, spec: ModelSpec) -> str:
    """Load the ``--init`` weights into ``module``; returns a description of where they came from."""
    from masklab.models.weights import ensure_weights, load_state_dict
    from masklab.models.zoo import WeightsSpec

    base = get_spec(cfg.model)
    if cfg.init == "scratch":
        return "scratch (random)"
    if cfg.init == "coco":
        if base.weights is None:
            raise UsageError(f"model {cfg.model!r} has no published COCO weights: use --init scratch or --init backbone")
        path = ensure_weights(base.weights)
        state = load_state_dict(path)
        # The standard recipe: keep everything, re-initialise the class-specific predictors.
        heads = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits.")
        kept = {k: v for k, v in state.items() if not k.startswith(heads)}
        missing, unexpected = module.load_state_dict(kept, strict=False)
        bad = [k for k in missing if not k.startswith(heads)]
        if bad or unexpected:
            raise WeightsMismatchError(f"COCO weights {path} do not fit {cfg.model}: missing {bad[:3]}, unexpected {unexpected[:3]}")
        return f"coco ({path.name}, class-specific heads replaced)"
    url, sha, fname = _BACKBONES[spec.arch]
    path = ensure_weights(WeightsSpec(url=url, sha256=sha, filename=fname, license="BSD-3-Clause (torchvision); ImageNet weights"))
    mapped = backbone_state_for(module, spec.arch, load_state_dict(path))
    module.backbone.body.load_state_dict(mapped, strict=False)
    return f"backbone ({fname}: {len(mapped)} trunk tensors)"


# -- data -------------------------------------------------------------------------------------------
def _augment_fn(enabled: bool):
    import torch
    from torchvision.transforms import v2

    steps = [v2.RandomHorizontalFlip(0.5), v2.ColorJitter(0.3, 0.3, 0.3, 0.03)] if enabled else []
    return v2.Compose(steps + [v2.ToDtype(torch.float32, scale=True), v2.SanitizeBoundingBoxes(min_size=1)])


def _to_model_input(sample: Sample, transform) -> tuple[Any, dict]:
    """Sample -> (float32 (3, H, W) image in [0, 1], torchvision target dict). Crowd regions are left
    out (torchvision's Mask R-CNN has no ignore regions); boxes, masks and labels go through the same
    transforms.v2 pipeline, so flips move all three together."""
    import torch
    from torchvision import tv_tensors

    t = sample.target[~sample.target.extra["iscrowd"]] if len(sample.target) else sample.target
    h, w = sample.image.shape[:2]
    image = tv_tensors.Image(torch.from_numpy(np.array(sample.image, copy=True)).permute(2, 0, 1))
    target = {
        "boxes": tv_tensors.BoundingBoxes(torch.from_numpy(t.boxes.reshape(-1, 4)), format="XYXY", canvas_size=(h, w)),
        "masks": tv_tensors.Mask(torch.from_numpy(t.masks.astype(np.uint8))),
        "labels": torch.from_numpy(t.class_ids.astype(np.int64)),
    }
    image, target = transform(image, target)
    return image.as_subclass(torch.Tensor), {
        "boxes": target["boxes"].as_subclass(torch.Tensor).float(),
        "masks": target["masks"].as_subclass(torch.Tensor),
        "labels": target["labels"],
    }


class _TorchDataset:
    def __init__(self, ds: SegmentationDataset, augment: bool) -> None:
        self.ds = ds
        self.transform = _augment_fn(augment)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        return _to_model_input(self.ds[i], self.transform)


def _collate(batch):
    return tuple(zip(*batch))


def _epoch_batches(n: int, *, epoch: int, seed: int, batch_size: int, rank: int, world: int) -> list[list[int]]:
    """This process's batches of epoch ``epoch``: one seeded permutation shared by all ranks, padded to
    a multiple of ``world`` and dealt round-robin (as DistributedSampler), cut into batches."""
    import torch

    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    per_rank = math.ceil(n / world)
    perm += perm[: per_rank * world - n]
    mine = perm[rank::world]
    return [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]


# -- evaluation -------------------------------------------------------------------------------------
def evaluate_model(module, val: SegmentationDataset, *, device: str, class_names: Sequence[str]) -> dict[str, float | None]:
    """Box and mask AP / AP50 of ``module`` on ``val`` (fractions in [0, 1]; None where undefined),
    with :func:`masklab.evaluation.evaluator.evaluate_instances`."""
    from masklab.evaluation.evaluator import evaluate_instances
    from masklab.models.backend import TorchBackend
    from masklab.structures.instances import Instances

    was_training = module.training
    backend = TorchBackend(module, device=device)
    preds = {}
    for image_id in val.image_ids:
        image = val.gt.load_image(image_id).array
        det = backend.predict([image])[0]
        labels = [class_names[i - 1] if 1 <= i <= len(class_names) else f"class_{i}" for i in det.class_ids.tolist()]
        preds[image_id] = Instances(boxes=det.boxes, masks=det.masks, scores=det.scores, class_ids=det.class_ids,
                                    labels=labels, image_size=image.shape[:2])
    res = evaluate_instances(val.gt, preds, model_classes=list(class_names))
    module.train(was_training)
    segm = res.segm.stats if res.segm is not None else {}
    return {"box_ap": res.bbox.stats.get("AP"), "box_ap50": res.bbox.stats.get("AP50"),
            "mask_ap": segm.get("AP"), "mask_ap50": segm.get("AP50")}


# -- run directory files ----------------------------------------------------------------------------
_CSV_FIELDS = ("epoch", "step", "seconds", "lr", "loss", *LOSS_NAMES, "box_ap", "box_ap50", "mask_ap", "mask_ap50")


def _write_metrics(run_dir: Path, rows: list[dict]) -> None:
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


def _plot_curves(run_dir: Path, rows: list[dict]) -> None:
    """``curves.png``: training losses (left) and val mask/box AP (right) per epoch; skipped without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    from masklab.io.atomic import atomic_write

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


def _card(cfg: TrainConfig, spec: ModelSpec, weights_rel: str, score: dict | None, *, step: int, epoch: int) -> dict:
    return {
        "format": CARD_FORMAT,
        "name": spec.name,
        "arch": spec.arch,
        "base_model": cfg.model,
        "categories": list(spec.categories),
        "num_classes": spec.num_classes,
        "min_size": spec.min_size,
        "max_size": spec.max_size,
        "preprocessing": "RGB uint8 -> float [0, 1]; the model normalises with ImageNet mean/std and resizes "
                         f"the shorter side to {spec.min_size} (longer side at most {spec.max_size})",
        "weights": weights_rel,
        "score": None if score is None else {"dataset": cfg.val, **score},
        "trained": {"data": cfg.data, "init": cfg.init, "epochs": epoch, "steps": step, "command": cfg.command},
        "description": spec.description,
        "license": spec.license,
    }


def package_model(run_dir: str | os.PathLike, dst: str | os.PathLike, *, fp16: bool = True, command: str = "") -> Path:
    """Copy the run's best weights to ``dst`` (.safetensors; fp16 storage halves the file, loading
    restores fp32) with its model card ``dst`` with ``.json``. Returns the weights path."""
    from safetensors.torch import load_file

    run_dir, dst = Path(run_dir), Path(dst)
    if dst.suffix != ".safetensors":
        raise UsageError(f"the packaged model must be a .safetensors path, found {dst}")
    card_path = run_dir / "model.json"
    if not card_path.is_file():
        raise UsageError(f"{run_dir}: no model.json (not a finished masklab run directory)")
    card = json.loads(card_path.read_text(encoding="utf-8"))
    state = load_file(str(run_dir / card["weights"]))
    if fp16:

        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    from masklab.engine.checkpoint import _write_safetensors

    _write_safetensors(dst, state, {"format": "masklab-model", "arch": card["arch"]})
    card = {**card, "weights": dst.name, "storage": "float16" if fp16 else "float32"}
    if command:
        card["packaged_with"] = command
    atomic_write_json(dst.with_suffix(".json"), card, indent=2)
    return dst


# -- the loop ---------------------------------------------------------------------------------------
def _resolve_lr(cfg: TrainConfig, world: int, spec: ModelSpec) -> float:
    base = cfg.lr if cfg.lr is not None else (2e-4 if cfg.init == "coco" else spec.train_lr)
    if cfg.lr is not None:
        return base
    return base * max(1.0, cfg.batch_size * cfg.accumulate * world / 8)


def _lr_factor(step: int, progress: float, warmup: int) -> float:
    warm = min(1.0, (step + 1) / max(1, warmup))
    return warm * 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))


def _settings_path(run_dir: Path) -> Path:
    return run_dir / "settings.json"


def load_settings(run_dir: str | os.PathLike) -> TrainConfig:
    """The :class:`TrainConfig` a run was started with (its ``settings.json``)."""
    path = _settings_path(Path(run_dir))
    if not Path(run_dir).is_dir():
        raise UsageError(f"--resume {run_dir}: no such run directory")
    if not path.is_file():
        raise UsageError(f"--resume {run_dir}: no settings.json there (not a masklab run directory)")
    doc = json.loads(path.read_text(encoding="utf-8"))
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in doc["config"].items() if k in known})


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool | None = None) -> TrainResult:
    """Run training as ``cfg`` says (``resume``: continue ``cfg.out`` from its ``last`` checkpoint).

    Rank 0 evaluates and writes the run directory; under torchrun every process trains on its share.
    """
    import torch

    from masklab.engine.segmenter import configure_threads, resolve_device

    cfg.check()
    run_dir = Path(cfg.out)
    device = resolve_device(cfg.device)
    info = init_distributed(device)
    try:
        return _train(cfg, run_dir, info, resume=resume, progress=progress, torch=torch, configure_threads=configure_threads)
    finally:
        close_distributed(info)


def _train(cfg: TrainConfig, run_dir: Path, info: DistInfo, *, resume: bool, progress: bool | None, torch, configure_threads) -> TrainResult:
    from tqdm import tqdm

    if not info.distributed:
        configure_threads()
    if resume:
        if checkpoint_paths(run_dir, "last") is None:
            raise UsageError(f"--resume {run_dir}: no checkpoint to continue from (checkpoints/last.json is missing)")
    elif checkpoint_paths(run_dir, "last") is not None:
        raise UsageError(f"{run_dir} already holds a run: continue it with --resume {run_dir}, or choose another --out")
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)

    train_ds = open_dataset(cfg.data)
    val_ds = open_dataset(cfg.val, **({"split": "val"} if str(cfg.val).endswith((".yaml", ".yml")) else {})) if cfg.val else None
    class_names = train_ds.class_names
    spec = _spec_for(cfg, class_names)
    module = _build(spec)
    init_note = _init_weights(module, cfg, spec) if not resume else "resumed"
    module.to(info.device)
    use_amp = (cfg.amp if cfg.amp is not None else info.device.startswith("cuda")) and info.device.startswith("cuda")
    if cfg.amp and not info.device.startswith("cuda"):
        print("masklab: --amp needs a GPU; training in fp32 on the CPU", file=sys.stderr)

    params = [p for p in module.parameters()]
    lr = _resolve_lr(cfg, info.world_size, spec)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    stages = parse_freeze(cfg.freeze)

    # Counters (all restored on --resume).
    step, epoch, batch_in_epoch, elapsed_before = 0, 0, 0, 0.0
    best_ap: float | None = None
    evals_since_best = 0
    history: list[dict] = []
    if resume:
        model_state, state = load_checkpoint(run_dir, "last")
        if list(state.get("class_names", [])) != list(class_names):
            raise UsageError(
                f"--resume {run_dir}: the checkpoint was trained on classes {state.get('class_names')}, "
                f"the dataset {cfg.data} has {list(class_names)}"
            )
        from masklab.models.weights import check_state_dict

        check_state_dict(module, model_state, source=f"checkpoint in {run_dir}")
        module.load_state_dict(model_state)
        optimizer.load_state_dict(state["optimizer"])
        if use_amp and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step, epoch, batch_in_epoch = int(state["step"]), int(state["epoch"]), int(state["batch_in_epoch"])
        elapsed_before = float(state["elapsed_s"])
        best_ap = state.get("best_mask_ap")
        evals_since_best = int(state.get("evals_since_best", 0))
        set_rng_state(state["rng"])
        history = read_metrics(run_dir)

    ddp_module = module
    _apply_freeze(module, _freeze_mode(stages, epoch))
    if info.distributed:
        ddp_module = torch.nn.parallel.DistributedDataParallel(
            module, device_ids=[info.local_rank] if info.backend == "nccl" else None, find_unused_parameters=True
        )

    # Multi-scale training (scale jitter): torchvision's transform picks a random shorter side per batch
    # from this tuple while training and uses the last entry when evaluating.
    tf = module.transform
    sizes = sorted({int(round(spec.min_size * (1 + cfg.scale_jitter * f))) for f in np.linspace(-1, 1, 5)}) if cfg.augment else [spec.min_size]

    wrapped_mode = [_freeze_mode(stages, epoch)]

    def train_mode():
        nonlocal ddp_module
        mode = _freeze_mode(stages, epoch)
        if info.distributed and mode != wrapped_mode[0]:
            # DDP registers its gradient hooks for the parameters that train when it is built: re-wrap.
            ddp_module = torch.nn.parallel.DistributedDataParallel(
                module, device_ids=[info.local_rank] if info.backend == "nccl" else None, find_unused_parameters=True
            )
            wrapped_mode[0] = mode
        tf.min_size = tuple(s for s in sizes if s != spec.min_size) + (spec.min_size,) if len(sizes) > 1 else (spec.min_size,)
        tf.max_size = int(round(spec.max_size * (1 + cfg.scale_jitter))) if cfg.augment else spec.max_size
        module.train()
        _apply_freeze(module, _freeze_mode(stages, epoch))

    def eval_mode():
        tf.min_size, tf.max_size = (spec.min_size,), spec.max_size
        module.eval()

    tds = _TorchDataset(train_ds, cfg.augment)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        settings = {
            "config": asdict(cfg),
            "resolved": {
                "device": info.device, "world_size": info.world_size, "backend": info.backend, "amp": use_amp,
                "lr": lr, "effective_batch": cfg.batch_size * cfg.accumulate * info.world_size,
                "class_names": list(class_names), "train_images": len(train_ds), "val_images": len(val_ds) if val_ds else 0,
                "train_format": train_ds.format, "val_format": val_ds.format if val_ds else None,
                "min_size": spec.min_size, "max_size": spec.max_size, "train_sizes": sizes, "init": init_note,
                "torch": torch.__version__,
            },
        }
        if resume:  # keep what only the first start knew; record the changed budget and the command
            old = json.loads(_settings_path(run_dir).read_text(encoding="utf-8"))
            settings["resolved"]["init"] = old.get("resolved", {}).get("init", init_note)
        atomic_write_json(_settings_path(run_dir), settings, indent=2)
    steps_per_epoch = math.ceil(math.ceil(len(train_ds) / info.world_size) / cfg.batch_size) // cfg.accumulate or 1
    total_steps = None if cfg.epochs is None else cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps or cfg.max_steps, cfg.max_steps)
    budget = cfg.time_budget_s
    t0 = time.monotonic() - elapsed_before
    last_save = time.monotonic()
    eval_cost = 0.0  # seconds the last evaluation took (kept free at the end of a time budget)

    def elapsed() -> float:
        return time.monotonic() - t0

    def progress_frac() -> float:
        fr = []
        if total_steps:
            fr.append(step / total_steps)
        if budget:
            fr.append(elapsed() / budget)
        return max(fr) if fr else 0.0

    def save(which: tuple[str, ...]) -> None:
        state = {
            "optimizer": optimizer.state_dict(),
            "scheduler": {"base_lr": lr, "warmup_steps": cfg.warmup_steps, "total_steps": total_steps or 0, "budget_s": budget or 0.0},
            "scaler": scaler.state_dict() if use_amp else {},
            "rng": rng_state(),
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "elapsed_s": elapsed(),
            "best_mask_ap": best_ap,
            "evals_since_best": evals_since_best,
            "class_names": list(class_names),
        }
        save_checkpoint(run_dir, model_state=module.state_dict(), state=state, step=step, which=which)

    def write_card(score: dict | None) -> None:
        best = checkpoint_paths(run_dir, "best") or checkpoint_paths(run_dir, "last")
        rel = str(best.weights.relative_to(run_dir))
        atomic_write_json(run_dir / "model.json", _card(cfg, spec, rel, score, step=step, epoch=epoch), indent=2)

    show = progress if progress is not None else sys.stderr.isatty()
    bar_total = budget if budget and not total_steps else total_steps
    bar = tqdm(total=bar_total, initial=int(min(elapsed(), budget)) if (budget and not total_steps) else step,
               desc="train", unit="s" if (budget and not total_steps) else "step", disable=not (show and info.is_main),
               dynamic_ncols=True)
    stopped = ""
    sums: dict[str, float] = {}
    count = 0
    best_score: dict | None = None
    train_mode()
    while not stopped:
        if cfg.epochs is not None and epoch >= cfg.epochs:
            stopped = f"{cfg.epochs} epochs done"
            break
        batches = _epoch_batches(len(tds), epoch=epoch, seed=cfg.seed, batch_size=cfg.batch_size, rank=info.rank, world=info.world_size)
        train_mode()
        loader = torch.utils.data.DataLoader(tds, batch_sampler=batches[batch_in_epoch:], collate_fn=_collate,
                                             num_workers=cfg.workers, persistent_workers=False)
        micro = 0
        for images, targets in loader:
            images = [im.to(info.device, non_blocking=True) for im in images]
            targets = [{k: v.to(info.device, non_blocking=True) for k, v in t.items()} for t in targets]
            micro += 1
            batch_in_epoch += 1
            sync = micro % cfg.accumulate == 0
            ctx = ddp_module.no_sync() if (info.distributed and not sync) else _null()
            with ctx, torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
                losses = ddp_module(images, targets)
                loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"the loss became {loss.item()} at step {step} ({ {k: round(v.item(), 4) for k, v in losses.items()} }); "
                    "lower --lr or check the dataset with masklab validate"
                )
            scaler.scale(loss / cfg.accumulate).backward()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
            count += 1
            if not sync:
                continue
            factor = _lr_factor(step, progress_frac(), cfg.warmup_steps)
            for g in optimizer.param_groups:
                g["lr"] = lr * factor
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], 10.0)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if budget and not total_steps:
                bar.n = int(min(elapsed(), budget))
                bar.refresh()
            else:
                bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{sums['loss'] / count:.3f}", lr=f"{lr * factor:.2g}", refresh=False)
            out_of_time = bool(budget) and elapsed() + eval_cost * 1.1 >= budget
            stop_now = broadcast_flag(info, out_of_time or (cfg.max_steps is not None and step >= cfg.max_steps))
            if stop_now:
                stopped = "time budget used" if out_of_time else f"{cfg.max_steps} steps done"
                break
            if info.is_main and time.monotonic() - last_save > cfg.save_every_s:
                save(("last",))
                last_save = time.monotonic()
        end_of_epoch = not stopped or batch_in_epoch >= len(batches)
        # -- evaluate and save (rank 0), once per epoch and when stopping --------------------------
        means = all_reduce_mean(info, [sums.get(k, 0.0) / max(count, 1) for k in ("loss", *LOSS_NAMES)])
        # A run stopped mid-epoch (time budget) logs the fraction of the epoch it did, e.g. 5.53.
        done = epoch + (1 if end_of_epoch else round(batch_in_epoch / max(len(batches), 1), 3))
        row: dict[str, Any] = {"epoch": done, "step": step, "seconds": round(elapsed(), 1),
                               "lr": optimizer.param_groups[0]["lr"], **dict(zip(("loss", *LOSS_NAMES), means))}
        if end_of_epoch:
            epoch += 1
            batch_in_epoch = 0
        improved = False
        if info.is_main:
            if val_ds is not None:
                t_eval = time.monotonic()
                eval_mode()
                score = evaluate_model(module, val_ds, device=info.device, class_names=class_names)
                eval_cost = time.monotonic() - t_eval
                row.update(score)
                ap = score.get("mask_ap") or 0.0
                improved = best_ap is None or ap > best_ap
                if improved:
                    best_ap, best_score, evals_since_best = ap, score, 0
                else:
                    evals_since_best += 1
                bar.write(f"epoch {row['epoch']}: loss {row['loss']:.3f}, val mask AP {ap:.3f} "
                          f"(AP50 {score.get('mask_ap50') or 0:.3f}), box AP {score.get('box_ap') or 0:.3f}")
            else:
                improved = True
                bar.write(f"epoch {row['epoch']}: loss {row['loss']:.3f}")
            history.append(row)
            save(("last", "best") if improved else ("last",))
            last_save = time.monotonic()
            if best_score is None and resume:
                best_score = _card_score(run_dir)
            write_card(best_score)
            _write_metrics(run_dir, history)
            _plot_curves(run_dir, history)
            if cfg.patience is not None and val_ds is not None and evals_since_best >= cfg.patience:
                stopped = stopped or f"early stop: val mask AP did not improve for {cfg.patience} evaluations"
        # Rank 0 decides (it alone evaluates and knows the evaluation's cost); every rank follows.
        if info.is_main and not stopped and budget and elapsed() + eval_cost >= budget:
            stopped = "time budget used"
        if broadcast_flag(info, bool(stopped)) and not stopped:
            stopped = "stopped by rank 0"
        barrier(info)
        sums, count = {}, 0
        train_mode()
    bar.close()
    eval_mode()
    if info.is_main:
        print(f"masklab: training stopped ({stopped}) at step {step}, epoch {epoch}; run directory {run_dir}", file=sys.stderr)
    return TrainResult(run_dir, step, epoch, best_ap, history, stopped)


def _card_score(run_dir: Path) -> dict | None:
    p = run_dir / "model.json"
    if not p.is_file():
        return None
    score = json.loads(p.read_text(encoding="utf-8")).get("score")
    return None if score is None else {k: v for k, v in score.items() if k != "dataset"}


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
