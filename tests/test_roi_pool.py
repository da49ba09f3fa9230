"""The dense CPU backward of RoIAlign agrees with torchvision's own, value for value."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign, roi_align

from masklab.models.roi_pool import FastMultiScaleRoIAlign, roi_align_fast_backward, use_fast_roi_pooling


def _rois(gen: torch.Generator, *, n_images: int, k: int, extent: float) -> torch.Tensor:
    """Random RoIs in input pixels, including tiny ones, ones past every border and degenerate ones."""
    xy = torch.rand(k, 2, generator=gen) * extent * 1.2 - extent * 0.1
    wh = torch.rand(k, 2, generator=gen) ** 2 * extent * 0.8
    boxes = torch.cat([xy, xy + wh], 1)
    boxes[:3] = torch.tensor([[0.0, 0.0, 0.2, 0.3], [extent - 1, extent - 2, extent + 5, extent + 9], [-8.0, -3.0, 4.0, 2.0]])
    image = torch.randint(0, n_images, (k, 1), generator=gen).float()
    return torch.cat([image, boxes], 1)


@pytest.mark.parametrize("out,sr,scale,hw", [((7, 7), 2, 1 / 8, (16, 16)), ((14, 14), 2, 1 / 4, (13, 21)), ((5, 3), 3, 0.5, (9, 7))])
def test_dense_backward_equals_torchvision(out, sr, scale, hw):
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(3, 6, *hw, generator=gen, dtype=torch.float64)
    rois = _rois(gen, n_images=2, k=40, extent=hw[0] / scale).to(torch.float64)  # image 2 has no RoI
    a = feats.clone().requires_grad_(True)
    b = feats.clone().requires_grad_(True)
    ref = roi_align(a, rois, out, spatial_scale=scale, sampling_ratio=sr, aligned=False)
    got = roi_align_fast_backward(b, rois, out, spatial_scale=scale, sampling_ratio=sr)
    assert torch.equal(ref, got)  # the forward is torchvision's own
    g = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    (ga,) = torch.autograd.grad(ref, a, g)
    (gb,) = torch.autograd.grad(got, b, g)
    assert gb.abs().max() > 0
    torch.testing.assert_close(gb, ga, rtol=0, atol=1e-10)


def test_dense_backward_handles_no_rois_and_float32():
    feats = torch.randn(2, 4, 8, 8, requires_grad=True)
    got = roi_align_fast_backward(feats, torch.zeros(0, 5), (7, 7), spatial_scale=0.5, sampling_ratio=2)
    assert got.shape == (0, 4, 7, 7)
    (grad,) = torch.autograd.grad(got.sum(), feats)
    assert grad.dtype == torch.float32 and not grad.any()


def test_multiscale_pooler_matches_torchvision_in_values_and_gradients():
    gen = torch.Generator().manual_seed(1)
    names = ["0", "1", "2"]
    feats = {n: torch.randn(2, 5, 32 // 2**i, 40 // 2**i, generator=gen) for i, n in enumerate(names)}
    shapes = [(128, 160), (120, 150)]
    boxes = [_rois(gen, n_images=1, k=30, extent=120.0)[:, 1:].clamp(0, 119) for _ in shapes]
    boxes = [torch.cat([b[:, :2], torch.maximum(b[:, 2:], b[:, :2] + 1)], 1) for b in boxes]
    ref_pool, fast_pool = MultiScaleRoIAlign(names, 7, 2), FastMultiScaleRoIAlign(names, 7, 2)
    outs, grads = [], []
    for pool in (ref_pool, fast_pool):
        pool.train()
        x = {k: v.clone().requires_grad_(True) for k, v in feats.items()}
        y = pool(x, boxes, shapes)
        outs.append(y)
        grads.append(torch.autograd.grad((y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum(), list(x.values())))
    assert torch.equal(outs[0], outs[1])
    for ga, gb in zip(*grads):
        torch.testing.assert_close(gb, ga, rtol=1e-5, atol=1e-5)
    assert fast_pool.state_dict() == {} == ref_pool.state_dict()


def test_use_fast_roi_pooling_swaps_the_poolers_of_a_model():
    from masklab.models.zoo import get_spec

    model = get_spec("small").build(num_classes=3, min_size=64, max_size=64)
    keys = set(model.state_dict())
    assert type(model.roi_heads.box_roi_pool) is MultiScaleRoIAlign  # inference and export keep torchvision's
    use_fast_roi_pooling(model)
    use_fast_roi_pooling(model)  # idempotent
    for name in ("box_roi_pool", "mask_roi_pool"):
        pool = getattr(model.roi_heads, name)
        assert type(pool) is FastMultiScaleRoIAlign and pool.sampling_ratio == 2
    assert set(model.state_dict()) == keys
    assert model.roi_heads.mask_roi_pool.output_size == (14, 14)


def test_training_builds_the_model_with_the_fast_poolers():
    from masklab.models.zoo import get_spec
    from masklab.training.model import build_model

    module = build_model(get_spec("small"))
    assert type(module.roi_heads.mask_roi_pool) is FastMultiScaleRoIAlign
