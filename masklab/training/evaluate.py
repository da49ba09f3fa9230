"""Validation during training: box and mask AP of the module being trained."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from masklab.data.dataset import SegmentationDataset
from masklab.evaluation.evaluator import evaluate_instances
from masklab.runtime.torch import TorchRuntime
from masklab.structures.instances import Instances

__all__ = ["evaluate_model"]


def evaluate_model(module: nn.Module, val: SegmentationDataset, *, device: str, class_names: Sequence[str]) -> dict[str, float | None]:
    """Box and mask AP / AP50 of ``module`` on ``val`` (fractions in [0, 1]; None where undefined),
    with :func:`masklab.evaluation.evaluator.evaluate_instances`. The module's train/eval mode is restored."""
    was_training = module.training
    backend = TorchRuntime(module, device=device)
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
