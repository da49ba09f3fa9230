"""Arithmetic per image (FLOP counting) and the machine's measured peak, for "% of peak"."""

from __future__ import annotations

import time

import numpy as np

from masklab.runtime.torch import to_tensor_chw

__all__ = ["count_gflop", "measure_peaks", "peak_for"]


def count_gflop(module, image: np.ndarray) -> float:
    """GFLOP (2 x multiply-adds) of one eager forward of a torchvision MaskRCNN ``module`` on ``image``
    (RGB uint8 (H, W, 3)), counted with ``torch.utils.flop_counter``."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        module.eval()([to_tensor_chw(image)])
    return counter.get_total_flops() / 1e9


def measure_peaks(*, seconds: float = 1.0) -> dict[str, float]:
    """Sustained GFLOP/s of this machine for fp32 and bf16 (keys ``"fp32"``, ``"bf16"``): the best of a
    2048^3 matmul and a 3x3 convolution (256 -> 256 channels, 64x64, channels-last) run for about
    ``seconds`` each, with torch's thread count as the entry point set it."""
    import torch
    import torch.nn.functional as F

    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(2048, 2048, dtype=dtype)
        b = torch.randn(2048, 2048, dtype=dtype)
        x = torch.randn(1, 256, 64, 64, dtype=dtype).contiguous(memory_format=torch.channels_last)
        w = torch.randn(256, 256, 3, 3, dtype=dtype).contiguous(memory_format=torch.channels_last)
        work = [
            (torch.mm, (a, b), 2 * 2048**3),
            (lambda x, w: F.conv2d(x, w, padding=1), (x, w), 2 * 256 * 256 * 9 * 64 * 64),
        ]
        best = 0.0
        with torch.inference_mode():
            for fn, fn_args, flop in work:
                fn(*fn_args)
                n, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < seconds / 2:
                    fn(*fn_args)
                    n += 1
                best = max(best, n * flop / (time.perf_counter() - t0) / 1e9)
        peaks[name] = best
    return peaks


def peak_for(precision: str, peaks: dict[str, float]) -> float | None:
    """The measured peak that applies to ``precision`` (fp16 runs on the bf16 units), None if not measured."""
    return peaks.get("bf16" if precision in ("bf16", "fp16") else "fp32")
