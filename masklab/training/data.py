"""The training data: dataset samples as torchvision's Mask R-CNN wants them, augmentation, and each
process's seeded batches of an epoch."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from masklab.data.dataset import Sample, SegmentationDataset

__all__ = ["augment_transform", "to_model_input", "TorchDataset", "collate", "epoch_batches"]


def augment_transform(enabled: bool, *, flip: bool = False) -> v2.Compose:
    """Flips and colour jitter (when ``enabled``; flips alone with ``flip``), then uint8 -> float32 in [0, 1];
    boxes under 1 px dropped."""
    steps = [v2.RandomHorizontalFlip(0.5), v2.ColorJitter(0.3, 0.3, 0.3, 0.03)] if enabled else []
    steps = steps or ([v2.RandomHorizontalFlip(0.5)] if flip else [])
    return v2.Compose(steps + [v2.ToDtype(torch.float32, scale=True), v2.SanitizeBoundingBoxes(min_size=1)])


def to_model_input(sample: Sample, transform) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sample -> (float32 (3, H, W) image in [0, 1], torchvision target dict). Crowd regions are left
    out (torchvision's Mask R-CNN has no ignore regions); boxes, masks and labels go through the same
    transforms.v2 pipeline, so flips move all three together.

    The target: ``boxes`` float32 (N, 4) XYXY pixels, ``masks`` uint8 (N, H, W) in {0, 1}, ``labels``
    int64 (N,) class ids (1-based: 0 is the background)."""
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


class TorchDataset(torch.utils.data.Dataset):
    """A :class:`SegmentationDataset` as a torch dataset of :func:`to_model_input` pairs."""

    def __init__(self, ds: SegmentationDataset, augment: bool, *, flip: bool = False) -> None:
        self.ds = ds
        self.transform = augment_transform(augment, flip=flip)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return to_model_input(self.ds[i], self.transform)


def collate(batch: list[tuple[Any, dict]]) -> tuple[tuple, tuple]:
    """``[(image, target), ...]`` -> ``(images, targets)`` (images keep their own sizes)."""
    return tuple(zip(*batch))


def epoch_batches(n: int, *, epoch: int, seed: int, batch_size: int, rank: int, world: int) -> list[list[int]]:
    """This process's batches of epoch ``epoch``: one seeded permutation shared by all ranks, padded to
    a multiple of ``world`` and dealt round-robin (as DistributedSampler), cut into batches."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    per_rank = math.ceil(n / world)
    perm += perm[: per_rank * world - n]
    mine = perm[rank::world]
    return [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
