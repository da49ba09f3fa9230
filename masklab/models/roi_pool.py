"""RoIAlign pooling with a fast CPU backward pass, for training Mask R-CNN on a CPU.

torchvision's CPU ``roi_align`` backward runs on one thread and recomputes the bilinear weights for
every channel: in a from-scratch training step of the ``small`` model on 2 cores it was the largest
single cost (37% of the step). Bilinear sampling is separable, so the gradient of one RoI is

    dL/dF[c] = By^T @ G[c] @ Bx / count

with ``By`` (out_h x H) and ``Bx`` (out_w x W) the per-axis sampling weights summed over each bin's
sample points, ``G`` the output gradient and ``count`` the samples per bin. Summed over the RoIs of
an image this is two small matrix products, which MKL runs on every core.

:class:`FastMultiScaleRoIAlign` is torchvision's :class:`~torchvision.ops.MultiScaleRoIAlign` with
that backward. The forward pass is torchvision's ``roi_align`` itself (same values), and everything
else (evaluation, no-grad inference, CUDA, adaptive sampling, feature maps larger than
``DENSE_MAX_PIXELS``) takes torchvision's own path. It has no parameters: state dicts are unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops import poolers as _tv_poolers

#: Feature maps with more pixels than this keep torchvision's backward: the dense per-axis weight
#: matrices grow with H and W, while torchvision's scatter does not (a 64x64 map costs ~1 GFLOP for
#: 256 RoIs of 7x7; the stride-4 level of an 800-px image would cost far more than it saves).
DENSE_MAX_PIXELS = 64 * 64


def _axis_weights(lo: Tensor, hi: Tensor, *, scale: float, bins: int, sampling_ratio: int, size: int) -> Tensor:
    """Per-axis RoIAlign weights, as torchvision computes them with ``aligned=False``.

    Args:
        lo, hi: float (K,) RoI start and end along one axis, in input-image pixels.
        scale: feature-map pixels per input pixel; bins: output size along this axis;
        sampling_ratio: sample points per bin along this axis (> 0); size: feature-map size (H or W).

    Returns:
        float (K, bins, size): row ``b`` holds the bilinear weights of bin ``b``'s sample points
        summed (not averaged) over them; samples outside ``[-1, size]`` weigh nothing, as in torchvision.
    """
    start = lo * scale
    length = (hi * scale - start).clamp(min=1.0)  # aligned=False forces RoIs to at least 1 pixel
    step = length / (bins * sampling_ratio)
    pos = start[:, None] + (torch.arange(bins * sampling_ratio, dtype=lo.dtype, device=lo.device) + 0.5) * step[:, None]
    valid = ((pos >= -1.0) & (pos <= size)).to(lo.dtype)
    pos = pos.clamp(min=0.0)
    low = pos.floor().long()
    edge = low >= size - 1
    low = torch.where(edge, torch.full_like(low, size - 1), low)
    high = torch.where(edge, low, low + 1)
    frac = torch.where(edge, torch.zeros_like(pos), pos - low.to(pos.dtype))
    weights = torch.zeros(lo.shape[0], bins * sampling_ratio, size, dtype=lo.dtype, device=lo.device)
    weights.scatter_add_(2, low[..., None], ((1.0 - frac) * valid)[..., None])
    weights.scatter_add_(2, high[..., None], (frac * valid)[..., None])
    return weights.reshape(lo.shape[0], bins, sampling_ratio, size).sum(2)


class _RoIAlignDenseBackward(torch.autograd.Function):
    """torchvision ``roi_align`` forward (``aligned=False``, fixed sampling ratio); separable backward."""

    @staticmethod
    def forward(ctx, features: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float, sampling_ratio: int):
        ctx.save_for_backward(rois)
        ctx.meta = (tuple(features.shape), features.dtype, output_size, spatial_scale, sampling_ratio)
        return roi_align(features, rois, output_size, spatial_scale=spatial_scale, sampling_ratio=sampling_ratio, aligned=False)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (rois,) = ctx.saved_tensors
        (n, c, h, w), dtype, (out_h, out_w), scale, sr = ctx.meta
        grad = torch.zeros(n, h, c * w, dtype=grad_out.dtype, device=grad_out.device)
        if rois.shape[0]:
            r = rois.to(grad_out.dtype)
            by = _axis_weights(r[:, 2], r[:, 4], scale=scale, bins=out_h, sampling_ratio=sr, size=h)  # (K, out_h, H)
            bx = _axis_weights(r[:, 1], r[:, 3], scale=scale, bins=out_w, sampling_ratio=sr, size=w)  # (K, out_w, W)
            # G @ Bx per RoI and channel: (K, out_h, C, W); then By^T @ that, summed over each image's RoIs.
            u = torch.einsum("kcpq,kqw->kpcw", grad_out, bx) / float(sr * sr)
            image = rois[:, 0].long()
            for i in torch.unique(image).tolist():
                sel = image == i
                grad[i] = by[sel].reshape(-1, h).T @ u[sel].reshape(-1, c * w)
        grad = grad.reshape(n, h, c, w).permute(0, 2, 1, 3).contiguous().to(dtype)
        return grad, None, None, None, None


def roi_align_fast_backward(features: Tensor, rois: Tensor, output_size: tuple[int, int], *, spatial_scale: float,
                            sampling_ratio: int) -> Tensor:
    """``torchvision.ops.roi_align(..., aligned=False)`` with the dense CPU backward where it pays.

    Args:
        features: float (N, C, H, W) feature map; rois: float (K, 5) rows ``[image index, x1, y1, x2, y2]``
            in input-image pixels; output_size: (out_h, out_w); spatial_scale: feature pixels per input
            pixel; sampling_ratio: sample points per bin and axis (<= 0: adaptive, torchvision's path).

    Returns:
        float (K, C, out_h, out_w), equal to torchvision's output.
    """
    dense = (
        features.device.type == "cpu"
        and features.requires_grad
        and torch.is_grad_enabled()
        and sampling_ratio > 0
        and features.shape[-2] * features.shape[-1] <= DENSE_MAX_PIXELS
    )
    if not dense:
        return roi_align(features, rois, output_size, spatial_scale=spatial_scale, sampling_ratio=sampling_ratio, aligned=False)
    return _RoIAlignDenseBackward.apply(features, rois, tuple(output_size), float(spatial_scale), int(sampling_ratio))


class FastMultiScaleRoIAlign(MultiScaleRoIAlign):
    """:class:`torchvision.ops.MultiScaleRoIAlign` whose training backward on the CPU is the dense one.

    Same arguments, same outputs, same (empty) state dict. While training (``module.train()``, gradients
    enabled, CPU tensors) each pyramid level is pooled by :func:`roi_align_fast_backward`; otherwise
    this is torchvision's module unchanged.
    """

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        if not (self.training and torch.is_grad_enabled()) or any(t.device.type != "cpu" for t in x.values()):
            return super().forward(x, boxes, image_shapes)
        x_filtered = _tv_poolers._filter_input(x, self.featmap_names)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _tv_poolers._setup_scales(
                x_filtered, image_shapes, self.canonical_scale, self.canonical_level
            )
        rois = _tv_poolers._convert_to_roi_format(boxes)
        size = tuple(self.output_size)
        if len(x_filtered) == 1:
            return roi_align_fast_backward(x_filtered[0], rois, size, spatial_scale=self.scales[0], sampling_ratio=self.sampling_ratio)
        levels = self.map_levels(boxes)
        first = x_filtered[0]
        result = first.new_zeros((len(rois), first.shape[1]) + size)
        for level, (feature, scale) in enumerate(zip(x_filtered, self.scales)):
            idx = torch.where(levels == level)[0]
            result[idx] = roi_align_fast_backward(feature, rois[idx], size, spatial_scale=scale,
                                                  sampling_ratio=self.sampling_ratio).to(result.dtype)
        return result


def use_fast_roi_pooling(model) -> None:
    """Swap a torchvision Mask R-CNN's box and mask RoI poolers for :class:`FastMultiScaleRoIAlign`
    (same settings). Idempotent; models without those poolers are left alone."""
    heads = getattr(model, "roi_heads", None)
    for name in ("box_roi_pool", "mask_roi_pool"):
        pool = getattr(heads, name, None)
        if type(pool) is MultiScaleRoIAlign:
            fast = FastMultiScaleRoIAlign(pool.featmap_names, pool.output_size, pool.sampling_ratio,
                                          canonical_scale=pool.canonical_scale, canonical_level=pool.canonical_level)
            setattr(heads, name, fast)
