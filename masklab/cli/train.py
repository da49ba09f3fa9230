"""``masklab train --data TRAIN --val VAL --out RUN_DIR``: fine-tune or train Mask R-CNN on your data.

Under ``torchrun --nproc_per_node N -m masklab train ...`` the same command trains with DDP.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train on your own dataset (COCO, VIA, LabelMe, VOC, YOLO-seg)",
        description="Train Mask R-CNN. RUN_DIR gets checkpoints (last/best), settings.json, metrics.csv, "
        "curves.png and model.json; RUN_DIR then works as --model RUN_DIR.",
    )
    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="TRAIN", help="training set (a COCO JSON, VIA JSON, LabelMe folder, VOC folder or YOLO data.yaml)")
    g.add_argument("--val", metavar="VAL", default=None, help="validation set: mask AP each epoch, best checkpoint, early stopping")
    g.add_argument("--out", "-o", metavar="RUN_DIR", help="run directory to create")
    g.add_argument("--resume", metavar="RUN_DIR", default=None,
                   help="continue this run from its newest checkpoint that verifies (--data/--val may name the "
                   "run's data where it has moved: its fingerprint must match)")
    g.add_argument("--allow-data-change", action="store_true",
                   help="with --resume: continue although the data differ from the run's (recorded in settings.json)")
    g = p.add_argument_group("model")
    g.add_argument("--model", "-m", default=None, help="architecture: maskrcnn_resnet50_fpn_v2 (default), maskrcnn_resnet50_fpn, small")
    g.add_argument("--init", default=None, choices=("coco", "backbone", "scratch"),
                   help="coco: COCO weights, class heads replaced (default); backbone: ImageNet trunk; scratch: random")
    g.add_argument("--freeze", default=None, help="none | backbone | heads, or a schedule like backbone:2,none (default: none)")
    g.add_argument("--min-size", type=int, default=None,
                   help="training image shorter side in pixels (default: the data's median, at most the model's)")
    g.add_argument("--max-size", type=int, default=None,
                   help="training image longer-side cap in pixels (default: the data's median, at most the model's)")
    g.add_argument("--mask-iou-head", action="store_true", default=None,
                   help="also train a MaskIoU head (Mask Scoring R-CNN): its predicted mask IoU becomes each object's quality")
    g = p.add_argument_group("schedule")
    g.add_argument("--epochs", type=int, default=None, help="number of passes over the training set")
    g.add_argument("--time-budget", default=None, metavar="DURATION", help="wall-clock budget, e.g. 20m or 1h; the LR schedule fits it")
    g.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    g.add_argument("--batch-size", type=int, default=None, help="images per step per process (default: 4 for inputs up to 400x400 px, else 2)")
    g.add_argument("--accumulate", type=int, default=None, help="gradient accumulation steps (default: 1)")
    g.add_argument("--lr", type=float, default=None, help="peak learning rate (AdamW; default 1e-3 scratch (small: 2e-3), 2e-4 coco, x batch/8)")
    g.add_argument("--warmup-steps", type=int, default=None,
                   help="linear warm-up steps (default: 5%% of the run's steps, estimated from a timed step under a "
                   "time budget; at most 100)")
    g.add_argument("--patience", type=int, default=None, help="early stop after this many evaluations without a better mask AP (default: 10)")
    g.add_argument("--augment", dest="augment", action=argparse.BooleanOptionalAction, default=None,
                   help="flips, scale and colour jitter (default: on when the run passes over the data at least 30 "
                   "times; a shorter run is still underfitting)")
    g = p.add_argument_group("run")
    g.add_argument("--device", default=None, help="auto | cpu | cuda (default: auto)")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision: fp16 on a GPU, bf16 on a CPU with native bf16 (Zen 4, Sapphire Rapids, "
                   "ARM bf16); default on where it runs natively, --no-amp for fp32")
    g.add_argument("--threads", default="auto", metavar="N|auto",
                   help="CPU threads (default: auto = every CPU, or half of them when a timed step at the start "
                   "shows that other programs keep the CPU busy)")
    g.add_argument("--workers", type=int, default=None, help="data loader processes (default: 0)")
    g.add_argument("--seed", type=int, default=None, help="random seed (default: 0)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--log-every", type=int, default=None, metavar="N",
                   help="without a progress bar (output not a terminal, or --no-progress): a line with loss, lr "
                   "and ETA every N steps; 0 = none (default: 50)")
    g = p.add_argument_group("packaging")
    g.add_argument("--package", nargs=2, metavar=("RUN_DIR", "DST"), default=None,
                   help="copy RUN_DIR's best weights (fp16) and model card to DST.safetensors + DST.json, then exit")
    p.set_defaults(run=run)


_OVERRIDABLE = ("epochs", "time_budget_s", "max_steps", "patience", "log_every")
#: paths a resume may name anew (a moved dataset); the data's fingerprint decides whether they are the run's
_PATHS = ("data", "val")


def run(args) -> int:
    from dataclasses import replace

    from masklab.errors import UsageError
    from masklab.inference.threads import configure_threads
    from masklab.training import TrainConfig, load_settings, package_model, parse_duration, train
    from masklab.training.ddp import world_size_from_env

    command = "masklab " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if args.package:
        path = package_model(args.package[0], args.package[1], command=command)
        print(f"packaged {args.package[0]} -> {path} (+ {path.with_suffix('.json').name})", file=sys.stderr)
        return 0
    given = {
        "data": args.data, "val": args.val, "out": args.out, "model": args.model, "init": args.init, "freeze": args.freeze,
        "min_size": args.min_size, "max_size": args.max_size, "epochs": args.epochs,
        "time_budget_s": None if args.time_budget is None else parse_duration(args.time_budget),
        "max_steps": args.max_steps, "batch_size": args.batch_size, "accumulate": args.accumulate, "lr": args.lr,
        "warmup_steps": args.warmup_steps, "patience": args.patience, "augment": args.augment,
        "device": args.device, "amp": args.amp, "workers": args.workers, "seed": args.seed, "log_every": args.log_every,
        "mask_iou_head": args.mask_iou_head,
    }
    given = {k: v for k, v in given.items() if v is not None}  # None = not typed: defaults live in TrainConfig
    given.update({k: os.path.abspath(given[k]) for k in _PATHS if k in given})
    if args.allow_data_change and not args.resume:
        raise UsageError("--allow-data-change applies to --resume RUN_DIR only")
    threads = None
    if args.threads != "auto":
        try:
            threads = int(args.threads)
        except ValueError:
            raise UsageError(f"--threads must be a number or auto, found {args.threads!r}") from None
    # under torchrun, its OMP_NUM_THREADS shares the CPUs between processes
    threads_mode = "auto" if world_size_from_env() <= 1 and threads is None else None
    if world_size_from_env() <= 1:
        configure_threads(threads)
    if args.resume:
        cfg = load_settings(args.resume)
        clash = {k: v for k, v in given.items() if k not in (*_OVERRIDABLE, *_PATHS, "out") and getattr(cfg, k) != v}
        if "out" in given and given["out"] != args.resume:
            clash["out"] = given["out"]
        if clash:
            raise UsageError(
                f"--resume {args.resume} continues that run with its own settings; these differ: "
                + ", ".join(f"--{k.replace('_', '-')} {v!r} (run has {getattr(cfg, k)!r})" for k, v in clash.items())
            )
        # The card's command then reproduces the run: the first command, then each resume.
        cfg = replace(cfg, out=args.resume, command=f"{cfg.command} && {command}".strip(" &"),
                      **{k: v for k, v in given.items() if k in (*_OVERRIDABLE, *_PATHS)})
        return _report(train(cfg, resume=True, progress=False if args.no_progress else None, threads=threads_mode,
                             allow_data_change=args.allow_data_change))
    missing = [f"--{k}" for k in ("data", "out") if k not in given]
    if missing:
        raise UsageError(f"masklab train needs {' and '.join(missing)} (or --resume RUN_DIR)")
    cfg = TrainConfig(**given, command=command)
    return _report(train(cfg, progress=False if args.no_progress else None, threads=threads_mode))


def _report(result) -> int:
    ap = "n/a (no --val)" if result.best_mask_ap is None else f"{result.best_mask_ap:.3f}"
    print(f"best val mask AP {ap}; use it with: masklab segment IMAGES --model {result.run_dir} --out DIR", file=sys.stderr)
    return 0
