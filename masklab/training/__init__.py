"""Train (fine-tune) Mask R-CNN on your own dataset; the run directory it writes is itself a model.

    >>> from masklab.training import TrainConfig, train                           # doctest: +SKIP
    >>> result = train(TrainConfig(data="shapes/train", val="shapes/val", out="runs/shapes",
    ...                            model="small", init="scratch", time_budget_s=1200))
    >>> Segmenter("runs/shapes")("scene.png")                                    # a run dir is a model

``RUN_DIR`` layout::

    settings.json        the resolved settings (what --resume continues with)
    metrics.csv          one row per epoch: losses, learning rate, val box/mask AP
    curves.png           losses and mask AP per epoch
    model.json           the model card (masklab-model-card/2): architecture, classes, input size,
                         val score, weights file
    checkpoints/         last.json, previous.json and best.json point at step-N.safetensors +
                         step-N.state.pt pairs, with each file's size and sha256; --resume takes the
                         newest pair that verifies

Where each part lives:

- :mod:`~masklab.training.config`: :class:`TrainConfig` (``settings.json``), the duration / freeze parsers;
- :mod:`~masklab.training.data`: samples as torch tensors, augmentation, each process's epoch batches;
- :mod:`~masklab.training.model`: the run's model spec, building, ``--init`` weights, ``--freeze``;
- :mod:`~masklab.training.schedule`: learning rate (warm-up + cosine) and the run's clock;
- :mod:`~masklab.training.trainer`: the loop (:class:`~masklab.training.trainer.Trainer`) and :func:`train`;
- :mod:`~masklab.training.counters`: where a run is (saved in checkpoints) and its running loss sums;
- :mod:`~masklab.training.evaluate`: validation AP during training;
- :mod:`~masklab.training.run_dir`: settings.json, metrics.csv, curves.png, model.json, :func:`package_model`;
- :mod:`~masklab.training.checkpoint`: crash-safe checkpoints; :mod:`~masklab.training.ddp`: torchrun.
"""

from masklab.training.config import TrainConfig, TrainResult, load_settings, parse_duration, parse_freeze
from masklab.training.evaluate import evaluate_model
from masklab.training.run_dir import package_model, read_metrics
from masklab.training.trainer import Trainer, train

__all__ = [
    "train",
    "Trainer",
    "TrainConfig",
    "TrainResult",
    "load_settings",
    "parse_duration",
    "parse_freeze",
    "package_model",
    "read_metrics",
    "evaluate_model",
]
