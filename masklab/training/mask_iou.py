"""The MaskIoU head's loss (Mask Scoring R-CNN): L2 between the head's predicted IoU and the true IoU
of the predicted mask, on the positive RoIs of a training forward. :func:`mask_iou_loss` is the head's
``loss_fn`` (:func:`masklab.models.mask_iou.attach_mask_iou_head`): the model's forward calls it and returns
``loss_mask_iou`` with torchvision's losses.

For each positive RoI (the ones torchvision's mask branch trained on): its ground-truth object is the
one the RoI heads' matcher assigns (recomputed here from the same boxes, so it is the same object); the
*true IoU* is that of the predicted 28x28 mask of the object's class thresholded at probability 0.5
with the object's mask projected onto the RoI at 28x28 (torchvision's ``project_masks_on_boxes``, >= 0.5),
as the mask loss's own target. The head sees the predicted mask detached: the IoU loss trains the head
and, through the RoI features, the shared layers, never the masks themselves.
"""

from __future__ import annotations

import torch

from masklab.models.mask_iou import HEAD_NAME, LOSS_NAME

__all__ = ["mask_iou_loss", "mask_iou_predictions", "mask_iou_targets", "LOSS_NAME"]


def mask_iou_targets(mask_logits: torch.Tensor, labels: torch.Tensor, gt_projected: torch.Tensor) -> torch.Tensor:
    """True IoU float (P,) in [0, 1] of ``mask_logits`` (P, num_classes, M, M) for class ``labels`` int64 (P,),
    thresholded at 0 (probability 0.5), with ``gt_projected`` float (P, M, M) in [0, 1] (>= 0.5 inside);
    0 when both are empty."""
    pred = mask_logits.gather(1, labels[:, None, None, None].expand(-1, 1, *mask_logits.shape[-2:]))[:, 0] > 0
    gt = gt_projected >= 0.5
    inter = (pred & gt).flatten(1).sum(1).float()
    union = (pred | gt).flatten(1).sum(1).float()
    return inter / union.clamp(min=1.0)


def mask_iou_loss(roi_heads, kept: dict) -> torch.Tensor:
    """The head's L2 loss on the positive RoIs of one training forward: the ``loss_fn`` of
    :func:`masklab.models.mask_iou.attach_mask_iou_head` (which calls it with ``roi_heads`` and what it
    ``kept`` of the forward). Without a positive RoI, a zero that still reaches every head parameter."""
    pred, target = mask_iou_predictions(roi_heads, kept)
    if pred is None:
        return sum(p.sum() for p in getattr(roi_heads, HEAD_NAME).parameters()) * 0.0
    return torch.nn.functional.mse_loss(pred.float(), target)


def mask_iou_predictions(roi_heads, kept: dict) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The head's predicted IoU float (P,) (unclipped, with gradients) and the true IoU float (P,) of the
    positive RoIs of a training forward (``kept``: see :func:`mask_iou_loss`); ``(None, None)`` without any."""
    from torchvision.models.detection.roi_heads import project_masks_on_boxes
    from torchvision.ops import box_iou

    labels, projected = [], []
    for boxes, target in zip(kept["boxes"], kept["targets"]):
        if len(boxes) == 0:
            continue
        matched = roi_heads.proposal_matcher(box_iou(target["boxes"], boxes)).clamp(min=0)
        labels.append(target["labels"][matched])
        projected.append(project_masks_on_boxes(target["masks"], boxes, matched, kept["logits"].shape[-1]))
    if not labels:
        return None, None
    labels_t = torch.cat(labels)
    logits = kept["logits"].detach()
    with torch.no_grad():
        target_iou = mask_iou_targets(logits, labels_t, torch.cat(projected))
    probs = logits.gather(1, labels_t[:, None, None, None].expand(-1, 1, *logits.shape[-2:])).sigmoid()
    pred = getattr(roi_heads, HEAD_NAME)(kept["features"], probs).gather(1, labels_t[:, None])[:, 0]
    return pred, target_iou
